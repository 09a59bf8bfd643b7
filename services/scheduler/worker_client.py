"""How an engine reaches its worker: one small interface, two transports.

`LocalWorkerClient` runs a ModelRunner in this process (offline inference and
benchmarks: no Ray, no gRPC; a tensor-parallel one has its other ranks in child
processes); `GrpcWorkerClient` talks `cairn.v1.Worker` to a worker actor.
Either way a step runs off the event loop, so the loop keeps
taking requests, aborts and health checks while the device works.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cairn.common.channel import make_channel, raise_for_rpc_error
from cairn.common.errors import Unavailable
from cairn.services.worker.convert import engine_config_to_proto, step_output_from_proto, step_to_proto
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.group import GroupRunner, open_runner
from cairn.services.worker.loader import resolve_model_path
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.step import StepInput, StepOutput
from cairn.v1 import common_pb2, worker_pb2, worker_pb2_grpc

# Statuses that mean the worker process (or the way to it) is gone, not that it
# refused one step: its KV cache and sequence state must be presumed lost.
_LOST_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
    }
)


T = TypeVar("T")


class WorkerLost(Unavailable):
    """The worker died or cannot be reached; its KV cache is gone with it."""


@dataclass(frozen=True)
class WorkerInfo:
    """What a loaded worker reports and the scheduler sizes its policy by."""

    worker_id: str
    model: str
    device: str
    num_blocks: int
    block_size: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_model_len: int


@dataclass(frozen=True)
class AdapterInfo:
    """A LoRA adapter a worker loaded."""

    name: str
    source: str
    rank: int


class WorkerClient(Protocol):
    worker_id: str

    async def load(self, config: EngineConfig) -> WorkerInfo: ...

    async def step(self, step: StepInput) -> StepOutput: ...

    async def load_adapter(self, name: str, source: str) -> AdapterInfo:
        """Loads the PEFT adapter at `source` (a registry reference or a directory) as `name`
        into a free slot; InvalidArgument if it does not fit the model."""
        ...

    async def unload_adapter(self, name: str) -> bool: ...

    async def check_health(self, timeout: float) -> bool: ...

    async def close(self) -> None: ...


class LocalWorkerClient:
    """A ModelRunner in this process. Every call runs on one dedicated thread:
    the runner is not reentrant, and device state (CUDA graphs, streams) stays
    on the thread that created it."""

    def __init__(self, worker_id: str = "local-0") -> None:
        self.worker_id = worker_id
        self.runner: ModelRunner | GroupRunner | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"cairn-{worker_id}")

    async def load(self, config: EngineConfig) -> WorkerInfo:
        self.runner = runner = await self._call(open_runner, config)
        await self._call(runner.load)
        await self._call(runner.profile_and_allocate_kv_cache)
        mc = runner.model_config
        return WorkerInfo(
            worker_id=self.worker_id,
            model=str(runner.model_dir),
            device=str(runner.device),
            num_blocks=runner.num_blocks,
            block_size=runner.block_size,
            vocab_size=mc.vocab_size,
            eos_token_ids=tuple(mc.eos_token_ids),
            max_model_len=runner.max_model_len,
        )

    async def step(self, step: StepInput) -> StepOutput:
        return await self._call(self.runner.step, step)

    async def load_adapter(self, name: str, source: str) -> AdapterInfo:
        runner = self.runner
        directory = await asyncio.to_thread(resolve_model_path, source, runner.config.model_cache_dir)
        loaded = await self._call(runner.load_adapter, name, directory, source)
        return AdapterInfo(loaded.name, loaded.source, loaded.rank)

    async def unload_adapter(self, name: str) -> bool:
        return await self._call(self.runner.unload_adapter, name)

    async def check_health(self, timeout: float) -> bool:
        return self.runner is not None

    async def close(self) -> None:
        if isinstance(self.runner, GroupRunner):
            await self._call(self.runner.close)
        self._thread.shutdown(wait=True, cancel_futures=True)
        self.runner = None

    def _call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)


class GrpcWorkerClient:
    """A worker serving `cairn.v1.Worker` at `address` (a Ray actor, or a standalone process)."""

    def __init__(self, worker_id: str, address: str) -> None:
        self.worker_id = worker_id
        self.address = address
        self._channel = make_channel(address)
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def load(self, config: EngineConfig) -> WorkerInfo:
        request = worker_pb2.LoadModelRequest(config=engine_config_to_proto(config))
        info = await self._call(self._stub.LoadModel, request)
        return WorkerInfo(
            worker_id=info.worker_id or self.worker_id,
            model=info.model,
            device=info.device,
            num_blocks=info.num_blocks,
            block_size=info.block_size,
            vocab_size=info.vocab_size,
            eos_token_ids=tuple(info.eos_token_ids),
            max_model_len=info.max_model_len,
        )

    async def step(self, step: StepInput) -> StepOutput:
        return step_output_from_proto(await self._call(self._stub.Step, step_to_proto(step)))

    async def load_adapter(self, name: str, source: str) -> AdapterInfo:
        request = worker_pb2.LoadAdapterRequest(name=name, ref=common_pb2.ModelRef(ref=source))
        info = await self._call(self._stub.LoadAdapter, request)
        return AdapterInfo(info.name or name, info.source or source, info.rank)

    async def unload_adapter(self, name: str) -> bool:
        reply = await self._call(self._stub.UnloadAdapter, worker_pb2.UnloadAdapterRequest(name=name))
        return reply.unloaded

    async def check_health(self, timeout: float) -> bool:
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service="cairn.v1.Worker"), timeout=timeout
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def _call(self, method: Callable[[Any], Awaitable[T]], request: Any) -> T:
        try:
            return await method(request)
        except grpc.RpcError as err:
            if err.code() in _LOST_CODES:
                raise WorkerLost(f"worker {self.worker_id} at {self.address}: {err.details()}") from err
            raise_for_rpc_error(err)
