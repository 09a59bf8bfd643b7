"""Test plumbing for the router suite: a background event loop with the real serving stack on it.

Tokenizer service, scheduler services and routers run as they do in
production, on loopback ports, on one event loop in a thread, so tests stay
synchronous and call them like any client would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from loopback import LoopThread

from cairn.common.server import RunningServer, start_server
from cairn.services.router.config import RouterConfig
from cairn.services.router.server import RouterRuntime
from cairn.services.scheduler.launcher import LocalLauncher
from cairn.services.scheduler.pool import WorkerPool
from cairn.services.scheduler.server import grpc_service
from cairn.services.scheduler.service_config import SchedulerServiceConfig
from cairn.v1 import inference_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc

R = TypeVar("R")

# Deployment "tiny": room for requests still running when a test disconnects or overloads.
CONTEXT = 2048
# Deployment "tiny-short": generations stay short whatever a fuzzer asks for.
SHORT_CONTEXT = 128


class InProcessScheduler:
    """A scheduler service whose worker is a ModelRunner in this process (the offline launcher):
    the real pool and gRPC shell, without a Ray actor per replica."""

    def __init__(self, loop: LoopThread, config: SchedulerServiceConfig) -> None:
        self.loop = loop
        self.pool = WorkerPool(LocalLauncher(), config, config.model, config.deployment_name)
        self.running: RunningServer = loop.run(self._start(config))

    async def _start(self, config: SchedulerServiceConfig) -> RunningServer:
        await self.pool.start(config.num_workers)
        return await start_server(config, [grpc_service(self.pool)])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        self.loop.run(self.running.stop(None))
        self.loop.run(self.pool.close())


@dataclass
class Router:
    loop: LoopThread
    runtime: RouterRuntime
    running: RunningServer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.runtime.http_port}"

    def stub(self, channel: grpc.Channel) -> inference_pb2_grpc.InferenceStub:
        return inference_pb2_grpc.InferenceStub(channel)

    def stop(self) -> None:
        self.loop.run(self.running.stop(None))
        self.loop.run(self.runtime.close())


def scheduler_config(model: Path, deployment: str, context: int, **overrides: Any) -> SchedulerServiceConfig:
    settings: dict[str, Any] = {
        "model": str(model),
        "deployment": deployment,
        "device": "cpu",
        "dtype": "float32",
        "block_size": 16,
        "max_model_len": context,
        "max_num_seqs": 32,
        "max_num_batched_tokens": 512,
        "num_blocks": 1024,
        "num_workers": 1,
        "port": 0,
        "metrics_port": 0,
        "log_level": "WARNING",
    }
    return SchedulerServiceConfig(**(settings | overrides))


def start_router(loop: LoopThread, **settings: Any) -> Router:
    config = RouterConfig(
        **({"port": 0, "metrics_port": 0, "http_port": 0, "log_level": "WARNING"} | settings)
    )

    async def start() -> Router:
        runtime = RouterRuntime(config)
        await runtime.start()
        return Router(loop, runtime, await start_server(config, runtime.grpc_services()))

    return loop.run(start())


def scheduler_stats(address: str) -> scheduler_pb2.SchedulerStats:
    with grpc.insecure_channel(address) as channel:
        return scheduler_pb2_grpc.SchedulerStub(channel).Stats(scheduler_pb2.StatsRequest(), timeout=30)


def wait_idle(address: str, timeout: float = 60.0) -> scheduler_pb2.SchedulerStats:
    """The scheduler's stats once nothing runs or waits and every KV block is free again.

    Fails (with the last stats) if that does not happen within `timeout`: a
    leak shows as blocks that never come back.
    """
    end = time.monotonic() + timeout
    while True:
        stats = scheduler_stats(address)
        total = sum(w.num_blocks for w in stats.workers)
        if stats.running == 0 and stats.waiting == 0 and stats.free_blocks == total:
            return stats
        if time.monotonic() > end:
            raise AssertionError(f"the scheduler did not go idle: {stats}")
        time.sleep(0.05)
