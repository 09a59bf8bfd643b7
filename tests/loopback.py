"""Services on loopback for synchronous tests: an event loop on a thread, and a cairn service started
on it from its `build(config)` context manager (the same one `cairn <svc> serve` runs)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

from cairn.common.config import ServiceConfig
from cairn.common.server import GrpcService, RunningServer, start_server

R = TypeVar("R")


class LoopThread:
    """An event loop on a thread: servers and async clients live there, tests stay synchronous."""

    def __init__(self, name: str = "test-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, R], timeout: float = 180) -> R:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Served:
    """The service `build(config)` makes, served on `loop` at an ephemeral loopback port."""

    def __init__(
        self,
        loop: LoopThread,
        config: ServiceConfig,
        build: Callable[[Any], AbstractAsyncContextManager[list[GrpcService]]],
    ) -> None:
        self.loop = loop
        self.config = config
        self._built = build(config)
        self.services: list[GrpcService] = []
        self.running: RunningServer = loop.run(self._start())

    async def _start(self) -> RunningServer:
        self.services = await self._built.__aenter__()
        return await start_server(self.config, self.services)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        self.loop.run(self.running.stop(None))
        self.loop.run(self._built.__aexit__(None, None, None))


class ServiceThread(Served):
    """A `Served` service on a loop of its own, which `stop()` also closes."""

    def __init__(
        self, config: ServiceConfig, build: Callable[[Any], AbstractAsyncContextManager[list[GrpcService]]]
    ) -> None:
        self.thread = LoopThread(f"{config.service_name}-server")
        super().__init__(self.thread, config, build)

    def stop(self) -> None:
        super().stop()
        self.thread.close()


def registry_on_loopback(root: Path, loop: LoopThread | None = None) -> Served:
    """A quiet registry (SQLite and blobs under `root`, no metrics port, warnings only) on an
    ephemeral loopback port: on `loop`, or on a loop of its own (a `ServiceThread`)."""
    from cairn.services.registry.config import RegistryConfig
    from cairn.services.registry.server import registry_services

    config = RegistryConfig(root=root, port=0, metrics_port=0, log_level="WARNING")
    if loop is None:
        return ServiceThread(config, registry_services)
    return Served(loop, config, registry_services)
