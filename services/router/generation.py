"""One prompt's generation on a scheduler replica: token deltas in, text deltas out.

The scheduler streams token ids per sequence; each of its messages becomes
one batched detokenization (shared with every other live request, see
`detokenizer`), the text goes through the sequence's stop-string matcher,
and what may be shown comes out as `SeqChunk`s. When every sequence has
ended, by the scheduler or by a stop string here, the stream is closed; if
the router ended it early (stop string, client gone, deadline) the scheduler
call is cancelled and the request aborted, so its KV blocks go back to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import grpc.aio

from cairn.common.channel import raise_for_rpc_error
from cairn.common.errors import DeadlineExceeded
from cairn.services.tokenizer.records import DetokenizeState, StreamStep
from cairn.v1 import common_pb2, scheduler_pb2

from . import metrics
from .detokenizer import Detokenizer
from .routing import Replica, RoutingTable, Target
from .stop_strings import StopStringMatcher

FINISH_STOP_STRING = common_pb2.FINISH_REASON_STOP_STRING
FINISH_ABORT = common_pb2.FINISH_REASON_ABORT
# Finishes caused by the last token itself, whose text is left out of the output.
_TOKEN_STOPS = (common_pb2.FINISH_REASON_EOS, common_pb2.FINISH_REASON_STOP_TOKEN)

AbortHook = Callable[[Replica, str], None]


@dataclass(frozen=True)
class GenerationSpec:
    """A validated, tokenized request, ready for a scheduler."""

    request_id: str
    target: Target
    prompt_ids: Sequence[int]
    schedule: scheduler_pb2.ScheduleRequest
    n: int = 1
    best_of: int = 1
    stops: Sequence[str] = ()
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    min_tokens: int = 0
    logprobs: bool = False
    prompt_logprobs: bool = False
    # Completions only: return the prompt before the completion.
    echo: bool = False
    echo_text: str = ""


@dataclass
class SeqChunk:
    """New output of one sequence: text to append and the tokens behind it."""

    index: int
    text: str
    tokens: list[common_pb2.Token]
    finish_reason: int = common_pb2.FINISH_REASON_UNSPECIFIED
    matched_stop: str = ""


@dataclass
class FinishedSeq:
    index: int
    text: str
    tokens: list[common_pb2.Token]
    finish_reason: int
    matched_stop: str
    cumulative_logprob: float


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class _Seq:
    index: int
    matcher: StopStringMatcher
    state: DetokenizeState
    finish_reason: int = common_pb2.FINISH_REASON_UNSPECIFIED
    matched_stop: str = ""
    num_tokens: int = 0
    cumulative_logprob: float = 0.0
    text: list[str] = field(default_factory=list)
    tokens: list[common_pb2.Token] = field(default_factory=list)

    def take(
        self, text: str, tokens: list[common_pb2.Token], finish: int, token_texts: list[str], min_tokens: int
    ) -> SeqChunk:
        if self.num_tokens + len(tokens) < min_tokens:
            # Stop strings count only from min_tokens on, like every other stop.
            out = self.matcher.flush() + text
        else:
            check = self.matcher.feed(text)
            out = check.text
            if check.stop is not None:
                tokens = tokens[: _tokens_behind(token_texts, check.consumed, len(tokens))]
                self.finish_reason, self.matched_stop = FINISH_STOP_STRING, check.stop
        if finish and not self.finish_reason:
            out += self.matcher.flush()
            self.finish_reason = finish
        self.num_tokens += len(tokens)
        return SeqChunk(self.index, out, tokens, self.finish_reason, self.matched_stop)


def _tokens_behind(token_texts: list[str], consumed: int, count: int) -> int:
    """How many of a delta's tokens produced its first `consumed` characters (at least one).

    Per-token texts approximate the in-context text (a split character counts
    as one U+FFFD), which is close enough to cut the token list at a stop string.
    """
    total = 0
    for i, text in enumerate(token_texts):
        total += len(text)
        if total >= consumed:
            return min(i + 1, count)
    return count


class Generation:
    def __init__(
        self,
        spec: GenerationSpec,
        table: RoutingTable,
        detokenizer: Detokenizer,
        *,
        deadline: float,
        abort: AbortHook,
        started: float | None = None,
    ) -> None:
        """`started` (monotonic) is when the request reached the router, for latency metrics."""
        self.spec = spec
        self._started = time.monotonic() if started is None else started
        self._table = table
        self._detok = detokenizer
        self._deadline = deadline
        self._abort = abort
        self._seqs: dict[int, _Seq] = {}
        self._model = spec.target.tokenizer_model
        self.cached_prompt_tokens = 0
        self.prompt_tokens: list[common_pb2.Token] = []
        self._last_chunk: float | None = None
        self._active: AsyncGenerator[list[SeqChunk], None] | None = None

    @property
    def usage(self) -> Usage:
        return Usage(
            len(self.spec.prompt_ids),
            sum(s.num_tokens for s in self._seqs.values()),
            self.cached_prompt_tokens,
        )

    def steps(self) -> AsyncIterator[list[SeqChunk]]:
        """The chunks of each scheduler message, until every sequence has finished."""
        self._active = self._steps()
        return self._active

    async def close(self) -> None:
        """End the generation wherever it stands (aborting it in the scheduler if still running)."""
        if self._active is not None:
            await self._active.aclose()

    async def collect(self) -> list[FinishedSeq]:
        """Run to the end; the n best sequences (by cumulative logprob when best_of > n), by index."""
        async for _ in self.steps():
            pass
        seqs = sorted(self._seqs.values(), key=lambda s: s.index)
        if len(seqs) > self.spec.n:
            seqs = sorted(seqs, key=lambda s: -s.cumulative_logprob)[: self.spec.n]
        return [
            FinishedSeq(i, "".join(s.text), s.tokens, s.finish_reason, s.matched_stop, s.cumulative_logprob)
            for i, s in enumerate(seqs)
        ]

    async def _steps(self) -> AsyncGenerator[list[SeqChunk], None]:
        model = self.spec.target.name
        outcome = "error"
        try:
            async for chunks in self._chunks():
                now = time.monotonic()
                if self._last_chunk is None:
                    metrics.TIME_TO_FIRST_TOKEN.labels(model).observe(now - self._started)
                else:
                    metrics.INTER_TOKEN_LATENCY.labels(model).observe(now - self._last_chunk)
                self._last_chunk = now
                yield chunks
            outcome = "finished"
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        finally:
            usage = self.usage
            metrics.REQUEST_LATENCY.labels(model, outcome).observe(time.monotonic() - self._started)
            metrics.PROMPT_TOKENS.labels(model).inc(usage.prompt_tokens)
            metrics.GENERATED_TOKENS.labels(model).inc(usage.completion_tokens)
            metrics.CACHED_TOKENS.labels(model).inc(usage.cached_prompt_tokens)

    async def _chunks(self) -> AsyncIterator[list[SeqChunk]]:
        first = True
        async with contextlib.aclosing(self._responses()) as responses:
            async for response in responses:
                if first:
                    first = False
                    self.cached_prompt_tokens = response.cached_prompt_tokens
                    if self.spec.prompt_logprobs:
                        await self._read_prompt_logprobs(response.prompt_logprobs)
                chunks = await self._advance(response.sequences)
                if chunks:
                    yield chunks
                if self._all_finished():
                    return
        # The scheduler ended the stream with sequences unfinished (it aborted them).
        ended = []
        for seq in self._seqs.values():
            if not seq.finish_reason:
                ended.append(seq.take("", [], FINISH_ABORT, [], 0))
                seq.text.append(ended[-1].text)
        if ended:
            yield ended

    def _all_finished(self) -> bool:
        # With best_of > n the scheduler decides which sequences it returns; only it knows the end.
        if self.spec.best_of > self.spec.n or len(self._seqs) < self.spec.n:
            return False
        return all(s.finish_reason for s in self._seqs.values())

    def _remaining(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the request's deadline passed before generation started")
        return remaining

    async def _responses(self) -> AsyncIterator[scheduler_pb2.ScheduleResponse]:
        """The scheduler's messages; a replica that is unreachable before its first message is swapped."""
        tried: list[Replica] = []
        while True:
            replica = self._table.choose(self.spec.target, self.spec.prompt_ids, exclude=tried)
            with self._table.lease(replica):
                call = replica.stub.Generate(self.spec.schedule, timeout=self._remaining())
                received, done = False, False
                try:
                    async for response in call:
                        received = True
                        yield response
                    done = True
                    return
                except grpc.aio.AioRpcError as error:
                    done = True
                    if error.code() != grpc.StatusCode.UNAVAILABLE or received:
                        raise_for_rpc_error(error)
                    self._table.mark_down(replica, f"UNAVAILABLE: {error.details()}")
                    tried.append(replica)
                    if not any(r.ready and r not in tried for r in self.spec.target.replicas):
                        raise_for_rpc_error(error)
                finally:
                    if not done:
                        call.cancel()
                        self._abort(replica, self.spec.request_id)

    async def _advance(self, deltas: Sequence[scheduler_pb2.SequenceDelta]) -> list[SeqChunk]:
        steps: list[StreamStep] = []
        moving: list[tuple[_Seq, list[common_pb2.Token], int]] = []
        for delta in deltas:
            seq = self._seqs.get(delta.index)
            if seq is None:
                seq = self._seqs[delta.index] = _Seq(
                    delta.index,
                    StopStringMatcher(
                        self.spec.stops, include_in_output=self.spec.include_stop_str_in_output
                    ),
                    DetokenizeState.seeded(self.spec.prompt_ids),
                )
            if seq.finish_reason:
                # Ended here by a stop string; the scheduler has not heard yet.
                continue
            seq.cumulative_logprob = delta.cumulative_logprob
            tokens = list(delta.tokens)
            ids = [t.id for t in tokens]
            if delta.finish_reason in _TOKEN_STOPS and ids and not self.spec.include_stop_str_in_output:
                ids.pop()
            steps.append(
                StreamStep(
                    self._model,
                    ids,
                    seq.state,
                    skip_special_tokens=self.spec.skip_special_tokens,
                    final=bool(delta.finish_reason),
                    stream_id=str(delta.index),
                )
            )
            moving.append((seq, tokens, delta.finish_reason))
        if not moving:
            return []
        results = await self._detok.advance(steps)
        if self.spec.logprobs:
            await self._name_tokens([t for _, tokens, _ in moving for t in tokens])
        chunks = []
        for (seq, tokens, finish), result in zip(moving, results, strict=True):
            seq.state = result.state
            if not self.spec.logprobs:
                for token, text in zip(tokens, result.token_texts, strict=False):
                    token.text = text
            chunk = seq.take(result.text, tokens, finish, result.token_texts, self.spec.min_tokens)
            seq.text.append(chunk.text)
            seq.tokens.extend(chunk.tokens)
            chunks.append(chunk)
        return chunks

    async def _name_tokens(self, tokens: Sequence[common_pb2.Token]) -> None:
        """Fill in the text (and bytes) of tokens and their alternatives, for logprobs."""
        ids = [t.id for t in tokens] + [alt.token_id for t in tokens for alt in t.top_logprobs]
        texts = await self._detok.token_texts(self._model, ids)
        for token in tokens:
            token.text = texts[token.id]
            for alt in token.top_logprobs:
                alt.text = texts[alt.token_id]
                alt.text_bytes = alt.text.encode()

    async def _read_prompt_logprobs(self, scored: Sequence[common_pb2.Token]) -> None:
        # The scheduler scores every prompt position but the first.
        ids = self.spec.prompt_ids
        tokens = [common_pb2.Token(id=ids[0])]
        if len(scored) == len(ids) - 1:
            tokens.extend(scored)
        else:
            tokens.extend(common_pb2.Token(id=i) for i in ids[1:])
        await self._name_tokens(tokens)
        self.prompt_tokens = tokens
