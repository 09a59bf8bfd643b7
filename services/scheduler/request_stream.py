"""One client request as it streams, across however many replicas serve it.

A request runs as one or more *pieces*, each a policy `Request` on some
replica. At first there is one piece, the whole request. If its replica is
lost (or drained) the request moves: when the client has seen nothing yet the
whole request simply starts again elsewhere; otherwise every unfinished sample
continues as a piece of its own whose prompt is the original prompt plus the
tokens that sample already streamed, with the budget that is left. The client
sees one stream with contiguous token indices, no error and, for greedy
requests, the same tokens. (Seeded sampling and presence/frequency penalties
count output from the continuation's start, so sampled requests continue with
the right distribution but not the same draws.)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

from cairn.services.scheduler.output import RequestOutput, SampleOutput
from cairn.services.scheduler.sequence import FinishReason, Request


@dataclass(eq=False)
class Piece:
    """Part of a request placed on one replica, under its own id there. It is
    the engine's sink for that id: deltas go through it to the stream."""

    stream: RequestStream
    request: Request
    # None: the whole request (every sample); else the sample it continues.
    sample_index: int | None = None
    # What the continued sample had before this piece started.
    base_logprob: float = 0.0
    # The replica serving it; None while it waits for one.
    replica: str | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def __call__(self, output: RequestOutput) -> None:
        self.stream.on_output(self, output)


@dataclass
class _Sample:
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    finish_reason: FinishReason | None = None


class StreamObserver(Protocol):
    def first_output(self, stream: RequestStream) -> None: ...

    def finished(self, stream: RequestStream) -> None: ...


class RequestStream:
    """The client's view: an async iterator of RequestOutput deltas whose sample
    indices and token order never change, wherever the pieces run."""

    def __init__(self, request: Request, observer: StreamObserver) -> None:
        self.request = request
        self.observer = observer
        self.samples = [_Sample() for _ in range(request.n)]
        self.pieces: dict[str, Piece] = {}
        self.num_moves = 0
        self.num_cached_tokens = 0
        self.first_output_sent = False
        self.finished = False
        self.arrival = time.monotonic()
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._ended = False

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_output_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples)

    def first_piece(self) -> Piece:
        return self._track(Piece(self, replace(self.request)))

    def replacement_pieces(self, lost: list[Piece]) -> list[Piece]:
        """Pieces that carry on the work of `lost` (taken off their replica)."""
        for piece in lost:
            self.pieces.pop(piece.request_id, None)
        self.num_moves += 1
        base_id = f"{self.request_id}~{self.num_moves}"
        if not self.first_output_sent:
            return [self._track(Piece(self, replace(self.request, request_id=base_id)))]
        indices: set[int] = set()
        for piece in lost:
            indices.update(range(self.request.n) if piece.sample_index is None else (piece.sample_index,))
        return [
            self._track(self._continuation(f"{base_id}.{i}", i))
            for i in sorted(indices)
            if self.samples[i].finish_reason is None
        ]

    def _continuation(self, request_id: str, index: int) -> Piece:
        sample = self.samples[index]
        done = len(sample.token_ids)
        params = self.request.sample_params(index)
        params = replace(
            params,
            max_tokens=params.max_tokens - done,
            min_tokens=max(0, params.min_tokens - done),
            prompt_logprobs=None,
        )
        request = replace(
            self.request,
            request_id=request_id,
            prompt_token_ids=[*self.request.prompt_token_ids, *sample.token_ids],
            sampling=params,
            n=1,
            best_of=None,
        )
        return Piece(self, request, index, sample.cumulative_logprob)

    def _track(self, piece: Piece) -> Piece:
        self.pieces[piece.request_id] = piece
        return piece

    def on_output(self, piece: Piece, output: RequestOutput) -> None:
        """A replica's delta for `piece`, re-indexed for the client."""
        if self.finished:
            return
        samples = []
        for delta in output.samples:
            index = delta.index if piece.sample_index is None else piece.sample_index
            sample = self.samples[index]
            sample.token_ids.extend(delta.token_ids)
            sample.cumulative_logprob = piece.base_logprob + delta.cumulative_logprob
            sample.finish_reason = delta.finish_reason
            samples.append(
                SampleOutput(
                    index,
                    delta.token_ids,
                    delta.logprobs,
                    delta.finish_reason,
                    delta.stop_token_id,
                    sample.cumulative_logprob,
                )
            )
        if output.finished:
            self.pieces.pop(piece.request_id, None)
        client = RequestOutput(self.request_id, samples)
        if self.first_token_time is None and any(s.token_ids for s in samples):
            self.first_token_time = time.monotonic()
        if not self.first_output_sent:
            self.first_output_sent = True
            client.prompt_logprobs = output.prompt_logprobs
            client.num_cached_tokens = self.num_cached_tokens = output.num_cached_tokens
            self.observer.first_output(self)
        client.finished = all(s.finish_reason is not None for s in self.samples)
        self._emit(client)

    def abort_unplaced(self) -> None:
        """Ends a request none of whose pieces is on a replica (all wait for one)."""
        self.pieces.clear()
        samples = []
        for index, sample in enumerate(self.samples):
            if sample.finish_reason is None:
                sample.finish_reason = FinishReason.ABORT
                samples.append(
                    SampleOutput(index, [], [], FinishReason.ABORT, None, sample.cumulative_logprob)
                )
        self._emit(RequestOutput(self.request_id, samples, finished=True))

    def fail(self, error: BaseException) -> None:
        """Ends the stream with an error (the client's call fails with its status)."""
        if self.finished:
            return
        self.pieces.clear()
        self._emit(error)

    def _emit(self, item: RequestOutput | BaseException) -> None:
        if isinstance(item, BaseException) or item.finished:
            self.finished = True
            self.finish_time = time.monotonic()
            self.observer.finished(self)
        self._queue.put_nowait(item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._ended:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        self._ended = item.finished
        return item
