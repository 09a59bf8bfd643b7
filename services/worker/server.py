"""The `cairn.v1.Worker` gRPC shell around a ModelRunner.

Steps run one at a time in a worker thread (the runner is not reentrant and
the forward releases the GIL), so the event loop keeps answering health
checks and GetInfo while a step is on the device.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from cairn.common.errors import FailedPrecondition, InvalidArgument
from cairn.common.server import GrpcService
from cairn.services.worker.config import WorkerConfig
from cairn.services.worker.convert import (
    adapter_to_proto,
    engine_config_from_proto,
    engine_config_to_proto,
    step_from_proto,
    step_output_to_proto,
)
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.loader import resolve_model_path
from cairn.services.worker.model_runner import ModelRunner
from cairn.v1 import worker_pb2, worker_pb2_grpc


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.runner: ModelRunner | None = None
        self._lock = asyncio.Lock()

    async def load(self, config: EngineConfig) -> worker_pb2.WorkerInfo:
        async with self._lock:
            if self.runner is not None:
                raise FailedPrecondition(f"worker {self.worker_id} already serves {self.runner.config.model}")
            runner = ModelRunner(config)
            await asyncio.to_thread(runner.load)
            await asyncio.to_thread(runner.profile_and_allocate_kv_cache)
            self.runner = runner
        return self.info()

    def info(self) -> worker_pb2.WorkerInfo:
        runner = self.runner
        if runner is None:
            return worker_pb2.WorkerInfo(worker_id=self.worker_id)
        mc = runner.model_config
        return worker_pb2.WorkerInfo(
            worker_id=self.worker_id,
            model=str(runner.config.model),
            architecture=mc.architecture,
            config=engine_config_to_proto(runner.config),
            num_blocks=runner.num_blocks,
            block_size=runner.block_size,
            vocab_size=mc.vocab_size,
            eos_token_ids=list(mc.eos_token_ids),
            device=str(runner.device),
            weight_bytes=runner.weight_bytes,
            peak_activation_bytes=max(runner.peak_activation_bytes, 0),
            kv_cache_bytes=runner.kv_cache_bytes,
            cuda_graph_batch_sizes=runner.cuda_graph_batch_sizes,
            max_model_len=runner.max_model_len,
            adapters=[adapter_to_proto(a) for a in runner.adapters],
        )

    def _loaded(self) -> ModelRunner:
        if self.runner is None:
            raise FailedPrecondition(f"worker {self.worker_id} has no model loaded; call LoadModel first")
        return self.runner

    async def LoadModel(self, request: worker_pb2.LoadModelRequest, context: grpc.aio.ServicerContext):
        return await self.load(engine_config_from_proto(request.config))

    async def GetInfo(self, request: worker_pb2.GetInfoRequest, context: grpc.aio.ServicerContext):
        return self.info()

    async def Step(self, request: worker_pb2.StepRequest, context: grpc.aio.ServicerContext):
        runner = self._loaded()
        step = step_from_proto(request)
        async with self._lock:
            start = time.perf_counter()
            output = await asyncio.to_thread(runner.step, step)
            elapsed = time.perf_counter() - start
        return step_output_to_proto(output, elapsed)

    async def FreeSequences(
        self, request: worker_pb2.FreeSequencesRequest, context: grpc.aio.ServicerContext
    ):
        runner = self._loaded()
        async with self._lock:
            freed = runner.free(list(request.seq_ids))
        return worker_pb2.FreeSequencesResponse(freed=freed)

    async def LoadAdapter(self, request: worker_pb2.LoadAdapterRequest, context: grpc.aio.ServicerContext):
        runner = self._loaded()
        if not request.name:
            raise InvalidArgument("LoadAdapter needs the name requests will use for the adapter")
        ref = request.ref.ref
        if not ref:
            raise InvalidArgument("LoadAdapter needs ref: a registry reference or a local adapter directory")
        # A registry reference is pulled outside the lock: steps keep running meanwhile.
        directory = await asyncio.to_thread(resolve_model_path, ref, runner.config.model_cache_dir)
        async with self._lock:
            adapter = await asyncio.to_thread(runner.load_adapter, request.name, directory, ref)
        return adapter_to_proto(adapter)

    async def UnloadAdapter(
        self, request: worker_pb2.UnloadAdapterRequest, context: grpc.aio.ServicerContext
    ):
        runner = self._loaded()
        async with self._lock:
            unloaded = runner.unload_adapter(request.name)
        return worker_pb2.UnloadAdapterResponse(unloaded=unloaded)


def grpc_service(servicer: WorkerServicer) -> GrpcService:
    return GrpcService("cairn.v1.Worker", servicer, worker_pb2_grpc.add_WorkerServicer_to_server)


@asynccontextmanager
async def build(config: WorkerConfig) -> AsyncIterator[list[GrpcService]]:
    servicer = WorkerServicer(config.worker_id or f"{config.host}:{config.port}")
    if config.model:
        await servicer.load(EngineConfig(model=config.model, device=config.device))
    yield [grpc_service(servicer)]
