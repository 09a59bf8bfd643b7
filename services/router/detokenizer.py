"""The router's side of incremental detokenization: one DetokenizeBatch call for many requests.

Every live request advances its streams after each scheduler message; sent
one by one, that is one tokenizer RPC per request per step. Here requests
queue their steps and a flusher sends whatever has queued as one call, so
while a call is in flight the next batch gathers: under load the number of
calls per step stays small whatever the number of requests.

It also names tokens for logprobs (the sampled token and its alternatives)
through the same batches, and remembers each model's token texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Sequence

from cairn.common.errors import CairnError, Unavailable
from cairn.services.tokenizer.client import TokenizerClient
from cairn.services.tokenizer.records import DetokenizeState, StreamResult, StreamStep

logger = logging.getLogger("cairn.router.detokenizer")

_Job = tuple[list[StreamStep], "asyncio.Future[list[StreamResult]]"]


class Detokenizer:
    def __init__(
        self, client: TokenizerClient, *, max_streams_per_call: int = 4096, flushers: int = 2
    ) -> None:
        """`flushers` calls may be in flight at once; each takes up to `max_streams_per_call` streams."""
        self._client = client
        self._max_streams = max_streams_per_call
        self._num_flushers = flushers
        self._pending: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._flushers: list[asyncio.Task[None]] = []
        self._texts: dict[str, dict[int, str]] = {}
        self.calls = 0

    async def close(self) -> None:
        for task in self._flushers:
            task.cancel()
        for task in self._flushers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._flushers = []
        while self._pending:
            _settle(self._pending.popleft()[1], error=Unavailable("the router is shutting down"))

    async def advance(self, steps: Sequence[StreamStep]) -> list[StreamResult]:
        """The results of `steps`, in order, from a batch shared with other callers."""
        if not steps:
            return []
        if not self._flushers:
            self._flushers = [
                asyncio.create_task(self._flush_forever(), name=f"detokenize-flusher-{i}")
                for i in range(self._num_flushers)
            ]
        future: asyncio.Future[list[StreamResult]] = asyncio.get_running_loop().create_future()
        self._pending.append((list(steps), future))
        self._wake.set()
        return await future

    async def token_texts(self, model: str, token_ids: Iterable[int]) -> dict[int, str]:
        """The text of each token on its own (specials spelled out), from this model's cache or one lookup."""
        known = self._texts.setdefault(model, {})
        missing = [t for t in dict.fromkeys(token_ids) if t not in known]
        if missing:
            [result] = await self.advance(
                [StreamStep(model, missing, DetokenizeState(), skip_special_tokens=False, final=True)]
            )
            known.update(zip(missing, result.token_texts, strict=True))
        return known

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            jobs = self._take()
            if not self._pending:
                self._wake.clear()
            if jobs:
                await self._flush(jobs)

    def _take(self) -> list[_Job]:
        jobs: list[_Job] = []
        streams = 0
        while self._pending and (not jobs or streams + len(self._pending[0][0]) <= self._max_streams):
            steps, future = self._pending.popleft()
            if not future.done():
                jobs.append((steps, future))
                streams += len(steps)
        return jobs

    async def _flush(self, jobs: list[_Job]) -> None:
        try:
            self.calls += 1
            results = await self._client.detokenize_batch([s for steps, _ in jobs for s in steps])
        except CairnError as error:
            if len(jobs) == 1:
                _settle(jobs[0][1], error=error)
                return
            # One request's bad stream must not fail the others: each alone shows whose it is.
            await asyncio.gather(*(self._flush([job]) for job in jobs))
            return
        except asyncio.CancelledError:
            for _, future in jobs:
                _settle(future, error=Unavailable("the router is shutting down"))
            raise
        except Exception as error:
            logger.exception("DetokenizeBatch failed")
            for _, future in jobs:
                _settle(future, error=Unavailable(f"detokenization failed: {type(error).__name__}: {error}"))
            return
        start = 0
        for steps, future in jobs:
            _settle(future, results[start : start + len(steps)])
            start += len(steps)


def _settle(
    future: asyncio.Future[list[StreamResult]],
    results: list[StreamResult] | None = None,
    error: BaseException | None = None,
) -> None:
    # The caller may have gone (client disconnected) while its batch was in flight.
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(results or [])
