"""HTTP responses that end their work when the client goes away.

A client that disconnects must cancel its generation at once, not at the
next token that fails to send (a queued request sends none for a while).
Both helpers watch the ASGI receive channel for `http.disconnect` next to
the work and cancel the work when it comes: `EventStream` for server-sent
events, `until_disconnected` for a response computed in full.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """The result of `work`, or ClientGone (with `work` cancelled) if the client leaves first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone
    return task.result()


def sse_event(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


class EventStream(Response):
    """text/event-stream from an async generator of encoded events, closed when the client leaves."""

    media_type = "text/event-stream"

    def __init__(
        self, events: AsyncGenerator[bytes, None], cleanup: Callable[[], Awaitable[object]] | None = None
    ) -> None:
        """`cleanup` runs last, whatever happened: also when the client left before the first event."""
        # No body: Response.__init__ would declare a Content-Length of 0.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = events
        self.cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        producer = asyncio.ensure_future(self._produce(send))
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, watcher):
                task.cancel()
            await asyncio.gather(producer, watcher, return_exceptions=True)
            await self.events.aclose()
            if self.cleanup is not None:
                await self.cleanup()

    async def _produce(self, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            # The connection broke under a send: the same as a disconnect.
            return
