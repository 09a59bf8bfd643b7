"""The `cairn.v1.Scheduler` gRPC shell around a WorkerPool.

Generate streams one ScheduleResponse per delta; when the caller goes away
(cancelled call, deadline, dropped connection) the stream's `finally` aborts
the request, so its KV blocks are freed within a step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import grpc

from cairn.common.server import GrpcService
from cairn.services.scheduler import convert
from cairn.services.scheduler.kuberay import RayClusterScaler
from cairn.services.scheduler.launcher import RayLauncher, connect_ray
from cairn.services.scheduler.pool import NodeScaler, WorkerPool
from cairn.services.scheduler.service_config import SchedulerServiceConfig
from cairn.v1 import scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    async def Generate(
        self, request: scheduler_pb2.ScheduleRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.ScheduleResponse]:
        info = self.pool.info
        adapter = await self.pool.adapters.resolve(request.adapter) if request.adapter else None
        stream = self.pool.submit(convert.request_from_proto(request, info, adapter))
        try:
            async for output in stream:
                yield convert.response_from_output(output, stream)
        finally:
            if not stream.finished:
                self.pool.abort(stream.request_id)

    async def Abort(
        self, request: scheduler_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.AbortResponse:
        return scheduler_pb2.AbortResponse(aborted=self.pool.abort(request.request_id))

    async def GetInfo(
        self, request: scheduler_pb2.SchedulerInfoRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SchedulerInfo:
        pool = self.pool
        info = pool.info
        if request.adapter:
            await pool.adapters.resolve(request.adapter)
        return convert.info_to_proto(info, pool.adapters.listed(), pool.adapter_ranks())

    async def Stats(
        self, request: scheduler_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SchedulerStats:
        return convert.stats_to_proto(self.pool.stats())

    async def ScaleWorkers(
        self, request: scheduler_pb2.ScaleWorkersRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ScaleWorkersResponse:
        workers = await self.pool.scale(request.replicas)
        return scheduler_pb2.ScaleWorkersResponse(workers=[convert.worker_to_proto(w) for w in workers])

    async def ListWorkers(
        self, request: scheduler_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListWorkersResponse:
        return scheduler_pb2.ListWorkersResponse(
            workers=[convert.worker_to_proto(w) for w in self.pool.workers()]
        )


def grpc_service(pool: WorkerPool) -> GrpcService:
    servicer = SchedulerServicer(pool)
    return GrpcService(SERVICE_NAME, servicer, scheduler_pb2_grpc.add_SchedulerServicer_to_server)


def node_scaler(config: SchedulerServiceConfig) -> RayClusterScaler | None:
    """In a cluster with `raycluster_name` set, the KubeRay worker group follows the pool's size."""
    if not config.raycluster_name:
        return None
    return RayClusterScaler(
        config.raycluster_name,
        config.raycluster_worker_group,
        config.raycluster_namespace or None,
        accelerators_per_worker=config.tensor_parallel_size,
    )


def build_pool(config: SchedulerServiceConfig, scaler: NodeScaler | None = None) -> WorkerPool:
    """The pool a scheduler service runs: Ray actors, local Ray unless ray_address is set."""
    if not config.model:
        raise ValueError("no model to serve: set --model (a registry reference or a model directory)")
    connect_ray(config.ray_address)
    # Actors on other nodes must be reachable by the scheduler; locally loopback is enough.
    host = "0.0.0.0" if config.ray_address else "127.0.0.1"
    launcher = RayLauncher(config.device, host, config.tensor_parallel_size)
    return WorkerPool(
        launcher,
        config,
        config.model,
        config.deployment_name,
        max_queue=config.max_queue,
        health_check_interval_s=config.health_check_interval_s,
        health_check_timeout_s=config.health_check_timeout_s,
        health_check_failures=config.health_check_failures,
        drain_timeout_s=config.drain_timeout_s,
        node_scaler=scaler,
        lora_modules=config.lora_modules,
        lora_scan_interval_s=config.lora_scan_interval_s,
    )


class ClusterScaler(NodeScaler, Protocol):
    """A NodeScaler that also holds the worker count (a KubeRay worker group)."""

    async def desired_workers(self) -> int: ...

    async def follow(self, on_change: Callable[[int], Awaitable[object]], workers: int) -> None: ...


async def start_pool(
    pool: WorkerPool, config: SchedulerServiceConfig, scaler: ClusterScaler | None
) -> asyncio.Task | None:
    """Starts the pool with num_workers workers; in a cluster, unless num_workers was set, with
    what the worker group says (chart, kubectl, Ray autoscaler all write it), and returns the
    task that keeps following it."""
    if scaler is None or "num_workers" in config.model_fields_set:
        await pool.start(config.num_workers)
        return None
    workers = await scaler.desired_workers()
    await pool.start(workers)
    return asyncio.create_task(scaler.follow(_scale_logged(pool), workers))


@asynccontextmanager
async def scheduler_services(config: SchedulerServiceConfig) -> AsyncIterator[list[GrpcService]]:
    scaler = node_scaler(config)
    pool = build_pool(config, scaler)
    following: asyncio.Task | None = None
    try:
        following = await start_pool(pool, config, scaler)
        log.info("deployment %s serves %s on %d workers", pool.deployment, config.model, pool.target)
        yield [grpc_service(pool)]
    finally:
        if following is not None:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
        await pool.close()


def _scale_logged(pool: WorkerPool) -> Callable[[int], Awaitable[None]]:
    """pool.scale for a watcher that must outlive one failed scaling."""

    async def scale(workers: int) -> None:
        try:
            await pool.scale(workers)
        except Exception:
            log.exception("could not scale deployment %s to %d workers", pool.deployment, workers)

    return scale
