"""Incremental detokenization for many streams at once, stateless between calls.

The algorithm is vLLM's and TGI's: a stream's state holds a short tail of its
tokens, `prefix_offset` (where the context starts) and `read_offset` (how many
have had their text emitted). New tokens are decoded together with that
context, and the text beyond `decode(context[prefix:read])` is emitted only
once it does not end in U+FFFD, i.e. once the last character is complete:
byte-level tokens may split a character, and their lone bytes decode to U+FFFD.
Decoding in context (instead of token by token) also keeps the spaces that
SentencePiece-style decoders drop from a sequence's first token.

Context always starts on a character boundary: at the last emit point, or for
a new stream at the longest prompt suffix that decodes cleanly. Byte-fallback
decoders (<0xNN> tokens, Llama 2 and Mistral) turn a whole run of byte tokens
into U+FFFD when it starts mid-character, which would swallow the new text.

Every decode of one call is queued first and then run as one
`tokenizers.Tokenizer.decode_batch` per tokenizer, so a call costs one pass
into Rust per model, whatever the number of streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cairn.common.errors import InvalidArgument

from .model_tokenizer import ModelTokenizer
from .records import DetokenizeState, StreamResult, StreamStep

REPLACEMENT_CHAR = "\ufffd"
# A character is at most 4 bytes, so an incomplete one started at most 3
# tokens back: the earlier emit points worth trying.
_MAX_SPLIT_BACK = 3
# Text still ending in U+FFFD after this many held tokens holds an invalid byte
# sequence (a model can sample one) that no later token repairs. Such a stream
# emits everything before its last U+FFFD, which no later byte can change in a
# lossy UTF-8 decode, so its state stays small and its text exact.
MAX_HELD_TOKENS = 16
# How far back into a seeded prompt tail to look for a clean place to start.
_MAX_SEED_TOKENS = 24

_QueueKey = tuple[ModelTokenizer, bool]
_Ticket = tuple[_QueueKey, int]


class _DecodeQueue:
    """Token id sequences per (tokenizer, skip_special_tokens), decoded in one batch call each."""

    def __init__(self) -> None:
        self._queues: dict[_QueueKey, list[list[int]]] = {}
        self._texts: dict[_QueueKey, list[str]] = {}

    def add(self, tokenizer: ModelTokenizer, ids: list[int], skip_special_tokens: bool) -> _Ticket:
        key = (tokenizer, skip_special_tokens)
        queue = self._queues.setdefault(key, [])
        queue.append(ids)
        return key, len(queue) - 1

    def run(self) -> None:
        for (tokenizer, skip), queue in self._queues.items():
            self._texts[(tokenizer, skip)] = tokenizer.backend.decode_batch(queue, skip_special_tokens=skip)

    def text(self, ticket: _Ticket) -> str:
        key, index = ticket
        return self._texts[key][index]


@dataclass
class _Start:
    """A candidate start of the context, with the decodes from it: up to read, and of everything."""

    prefix: int
    prefix_ticket: _Ticket
    full_ticket: _Ticket


@dataclass
class _Stream:
    """One stream's working copy: its context plus the new tokens, and where its offsets stand."""

    step: StreamStep
    tokenizer: ModelTokenizer
    ids: list[int]
    read: int
    held_before: int
    starts: list[_Start]
    token_tickets: list[_Ticket]
    prefix: int = 0
    prefix_text: str = ""
    full_text: str = ""
    split_tickets: list[tuple[int, _Ticket]] = field(default_factory=list)
    text: str = ""

    def choose_start(self, queue: _DecodeQueue) -> None:
        """The first candidate whose context decodes cleanly; the last (no context) always does."""
        for start in self.starts:
            prefix_text = queue.text(start.prefix_ticket)
            if start is self.starts[-1] or REPLACEMENT_CHAR not in prefix_text:
                self.prefix, self.prefix_text = start.prefix, prefix_text
                self.full_text = queue.text(start.full_ticket)
                return

    def emit(self, text: str, upto: int) -> None:
        """Emit the text of the tokens up to `upto`; they become the next call's context."""
        if upto > self.read:
            self.text = _suffix_after(self.prefix_text, text)
            self.prefix, self.read = self.read, upto

    def result(self, queue: _DecodeQueue) -> StreamResult:
        state = DetokenizeState(tuple(self.ids[self.prefix :]), 0, self.read - self.prefix)
        return StreamResult(
            stream_id=self.step.stream_id,
            text=self.text,
            state=state,
            token_texts=[queue.text(t) for t in self.token_tickets],
        )


def detokenize_batch(
    steps: Sequence[StreamStep], tokenizers: Mapping[str, ModelTokenizer]
) -> list[StreamResult]:
    """Advance each stream by its new tokens; `tokenizers` maps each step's model to its tokenizer."""
    if not steps:
        raise InvalidArgument("streams is empty; send the streams that advanced")
    first = _DecodeQueue()
    streams = [_open(i, step, tokenizers[step.model], first) for i, step in enumerate(steps)]
    first.run()

    # Streams whose text ends mid-character may still emit up to an earlier
    # token; those candidates take a second batch.
    splits = _DecodeQueue()
    for s in streams:
        s.choose_start(first)
        if s.step.final or not s.full_text.endswith(REPLACEMENT_CHAR):
            s.emit(s.full_text, len(s.ids))
            continue
        lowest = max(s.read + 1, len(s.ids) - _MAX_SPLIT_BACK)
        s.split_tickets = [
            (end, splits.add(s.tokenizer, s.ids[s.prefix : end], s.step.skip_special_tokens))
            for end in range(len(s.ids) - 1, lowest - 1, -1)
        ]
    splits.run()
    for s in streams:
        if s.split_tickets:
            _emit_before_incomplete(s, splits)
    return [s.result(first) for s in streams]


def _emit_before_incomplete(s: _Stream, splits: _DecodeQueue) -> None:
    """Emit up to the latest candidate token whose text is safe to emit while the full text ends in U+FFFD.

    Normally that is text ending in a complete character. A stream holding
    MAX_HELD_TOKENS takes any candidate short of the last U+FFFD, invalid bytes
    included; if none is, it emits everything so its state cannot grow.
    """
    stuck = s.held_before >= MAX_HELD_TOKENS
    full = s.full_text
    for end, ticket in s.split_tickets:
        text = splits.text(ticket)
        safe = (
            len(text) < len(full) and full.startswith(text) if stuck else not text.endswith(REPLACEMENT_CHAR)
        )
        if safe:
            s.emit(text, end)
            return
    if stuck:
        s.emit(full, len(s.ids))


def _open(index: int, step: StreamStep, tokenizer: ModelTokenizer, queue: _DecodeQueue) -> _Stream:
    """Validate a step and queue its decodes: from each candidate start, and of each new token alone."""
    state = step.state
    context = list(state.context_token_ids)
    where = f"streams[{index}] ({step.stream_id!r})" if step.stream_id else f"streams[{index}]"
    if not 0 <= state.prefix_offset <= state.read_offset <= len(context):
        raise InvalidArgument(
            f"{where}: state offsets (prefix {state.prefix_offset}, read {state.read_offset}) do not fit its "
            f"{len(context)} context tokens; send back the state the previous call returned"
        )
    new = list(step.new_token_ids)
    tokenizer.check_token_ids(context, f"{where} state")
    tokenizer.check_token_ids(new, where)
    ids = context + new
    read = state.read_offset
    # Equal offsets are a seeded stream (a prompt tail as context, see
    # DetokenizeState.seeded): try its suffixes, longest first.
    if state.prefix_offset < read:
        candidates = [state.prefix_offset]
    else:
        candidates = list(range(max(0, read - _MAX_SEED_TOKENS), read + 1))
    skip = step.skip_special_tokens
    return _Stream(
        step,
        tokenizer,
        ids,
        read,
        held_before=len(context) - read,
        starts=[
            _Start(p, queue.add(tokenizer, ids[p:read], skip), queue.add(tokenizer, ids[p:], skip))
            for p in candidates
        ],
        token_tickets=[queue.add(tokenizer, [t], False) for t in new],
    )


def _suffix_after(prefix_text: str, text: str) -> str:
    """What `text` adds to `prefix_text`.

    Normally `text` extends `prefix_text`. When it does not (a U+FFFD emitted
    for an invalid sequence that later bytes turned into a character), the new
    text after the common part is emitted, so nothing is lost.
    """
    if text.startswith(prefix_text):
        return text[len(prefix_text) :]
    common = 0
    for a, b in zip(prefix_text, text, strict=False):
        if a != b:
            break
        common += 1
    return text[common:]
