"""Test plumbing for the tokenizer suite: a background event loop, services served on it, a sync client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from cairn.common.config import ServiceConfig
from cairn.common.server import GrpcService, RunningServer, start_server
from cairn.services.tokenizer.client import TokenizerClient

R = TypeVar("R")


class LoopThread:
    """An event loop on a thread: servers and async clients live there, tests stay synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tokenizer-test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, R], timeout: float = 120) -> R:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Served:
    """A service built by its own `build(config)` context manager, on an ephemeral loopback port."""

    def __init__(
        self,
        loop: LoopThread,
        config: ServiceConfig,
        build: Callable[[Any], AbstractAsyncContextManager[list[GrpcService]]],
    ) -> None:
        self._loop = loop
        self._config = config
        self._services = build(config)
        self.running: RunningServer = loop.run(self._start())

    async def _start(self) -> RunningServer:
        services = await self._services.__aenter__()
        return await start_server(self._config, services)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        self._loop.run(self.running.stop(None))
        self._loop.run(self._services.__aexit__(None, None, None))


class SyncClient:
    """The async TokenizerClient, driven from synchronous tests through the loop thread."""

    def __init__(self, loop: LoopThread, client: TokenizerClient) -> None:
        self._loop = loop
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._loop.run(method(*args, **kwargs))
