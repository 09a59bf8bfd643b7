"""Stop strings found across delta boundaries, with nothing after them released."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cairn.common.errors import InvalidArgument
from cairn.services.router.stop_strings import MAX_STOP_STRINGS, StopStringMatcher


def run(stops: list[str], deltas: list[str], include: bool = False) -> tuple[list[str], str | None, int]:
    """Released pieces, the matched stop, and how much of its last delta the match consumed."""
    matcher = StopStringMatcher(stops, include_in_output=include)
    out = []
    for delta in deltas:
        check = matcher.feed(delta)
        out.append(check.text)
        if check.stop is not None:
            return out, check.stop, check.consumed
    out.append(matcher.flush())
    return out, None, 0


def test_a_stop_split_over_three_deltas_is_found_and_cut() -> None:
    out, stop, consumed = run(["STOP"], ["Hello S", "T", "OP and more"])
    assert "".join(out) == "Hello " and stop == "STOP" and consumed == 2
    # Nothing that could start the stop was shown before the match was certain.
    assert out == ["Hello ", "", ""]


def test_held_text_is_released_once_it_cannot_start_a_stop() -> None:
    out, stop, _ = run(["STOP"], ["ab S", "Tx", "yz"])
    assert stop is None and out == ["ab ", "STx", "yz", ""]


def test_the_tail_is_held_until_the_end_and_then_flushed() -> None:
    out, stop, _ = run(["</end>"], ["text </e", "n"])
    assert stop is None and out == ["text ", "", "</en"]


def test_earliest_stop_wins_and_the_longer_of_two_at_the_same_place() -> None:
    assert run(["cd", "bcd"], ["abcde"])[1] == "bcd"
    assert run(["b", "bcd"], ["abcde"])[1] == "bcd"
    assert run(["de", "b"], ["abcde"])[1] == "b"


def test_include_in_output_keeps_the_stop_string() -> None:
    out, stop, consumed = run(["\n\n"], ["line one\n", "\nline two"], include=True)
    assert "".join(out) == "line one\n\n" and stop == "\n\n" and consumed == 1


def test_bad_stop_lists_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        StopStringMatcher(["ok", ""])
    with pytest.raises(InvalidArgument, match="at most"):
        StopStringMatcher([str(i) for i in range(MAX_STOP_STRINGS + 1)])


@given(
    text=st.text(alphabet="abc€\n", max_size=40),
    stops=st.lists(st.text(alphabet="abc€\n", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=8),
    include=st.booleans(),
)
def test_any_split_releases_exactly_the_text_before_the_first_stop(
    text: str, stops: list[str], cuts: list[int], include: bool
) -> None:
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    deltas = [text[a:b] for a, b in itertools.pairwise(bounds)] or [""]
    out, stop, _ = run(stops, deltas, include)
    hits = [(text.find(s), -len(s), s) for s in stops if s in text]
    if not hits:
        assert stop is None and "".join(out) == text
        return
    start, _, first = min(hits)
    assert stop == first
    assert "".join(out) == text[: start + (len(first) if include else 0)]
