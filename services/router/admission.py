"""Bounded admission: at most `max_running` requests at once, at most `max_queue` waiting.

A request beyond both is refused at once with RESOURCE_EXHAUSTED (HTTP 429)
and a Retry-After, instead of queueing without limit: under overload a client
hears "later" in microseconds rather than waiting out a queue that only grows.
Waiters are served first come, first served, and a waiter whose deadline
passes or whose client goes away leaves the queue without a trace.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cairn.common.errors import DeadlineExceeded, ResourceExhausted


class RetryLater(ResourceExhausted):
    """RESOURCE_EXHAUSTED with the seconds after which a retry may succeed."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


class AdmissionGate:
    def __init__(self, max_running: int, max_queue: int, retry_after_s: float = 1.0) -> None:
        self.max_running = max_running
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold one running slot for the body; waits up to `timeout` seconds for it."""
        await self._acquire(timeout)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, timeout: float | None) -> None:
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise RetryLater(
                f"the router is at capacity ({self.running} requests running, {len(self._waiters)} queued); "
                f"retry after {self.retry_after_s:g}s",
                self.retry_after_s,
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we gave up: pass it on.
                self._release()
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
            if isinstance(exc, asyncio.TimeoutError):
                raise DeadlineExceeded(
                    "the deadline passed while the request waited for a free slot"
                ) from None
            raise

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                # The slot moves to the waiter: `running` stays as it is.
                waiter.set_result(None)
                return
        self.running -= 1
