"""Stop strings found in streamed text, wherever the token boundaries fall.

Text arrives in deltas that split anywhere, so a stop string may begin in one
delta and end in a later one. The matcher therefore holds back the longest
tail of the text that could still be the start of a stop string and releases
it only once a later delta rules the stop out: text after a stop string, and
the stop string itself unless asked for, never reaches the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cairn.common.errors import InvalidArgument

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256


def check_stop_strings(stops: Sequence[str]) -> None:
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}")
    for i, stop in enumerate(stops):
        if not stop:
            raise InvalidArgument(f"stop[{i}] is empty; every stop string needs at least one character")
        if len(stop) > MAX_STOP_LENGTH:
            raise InvalidArgument(f"stop[{i}] is {len(stop)} characters long; the limit is {MAX_STOP_LENGTH}")


@dataclass(frozen=True)
class StopCheck:
    """What one delta releases.

    `text` may be sent on. When `stop` is set the stream is finished and
    `consumed` is how many characters of the delta the match needed: the
    delta's text after that position was never released.
    """

    text: str
    stop: str | None = None
    consumed: int = 0


class StopStringMatcher:
    def __init__(self, stops: Sequence[str], *, include_in_output: bool = False) -> None:
        check_stop_strings(stops)
        self._stops = tuple(stops)
        self._include = include_in_output
        # Every proper prefix of a stop string: the tails worth holding back.
        self._prefixes = frozenset(s[:i] for s in self._stops for i in range(1, len(s)))
        self._longest_prefix = max((len(p) for p in self._prefixes), default=0)
        self._held = ""
        self.stopped = False

    @property
    def held(self) -> str:
        return self._held

    def feed(self, delta: str) -> StopCheck:
        if self.stopped:
            raise RuntimeError("the stream already matched a stop string")
        if not self._stops:
            return StopCheck(delta)
        text = self._held + delta
        match = self._earliest_match(text)
        if match is not None:
            start, stop = match
            self.stopped = True
            self._held = ""
            end = start + len(stop)
            released = text[:end] if self._include else text[:start]
            return StopCheck(released, stop, end - (len(text) - len(delta)))
        keep = self._tail_to_hold(text)
        self._held = text[len(text) - keep :] if keep else ""
        return StopCheck(text[: len(text) - keep])

    def flush(self) -> str:
        """The stream ended without a match: release what was held."""
        held, self._held = self._held, ""
        return held

    def _earliest_match(self, text: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self._stops:
            at = text.find(stop)
            # Earliest start wins; of two starting together, the longer one.
            if at >= 0 and (best is None or at < best[0] or (at == best[0] and len(stop) > len(best[1]))):
                best = (at, stop)
        return best

    def _tail_to_hold(self, text: str) -> int:
        for size in range(min(self._longest_prefix, len(text)), 0, -1):
            if text[len(text) - size :] in self._prefixes:
                return size
        return 0
