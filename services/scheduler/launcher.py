"""Where worker replicas come from: Ray actors (the service) or this process (offline).

A launcher starts an empty worker and returns a client for it; the pool
loads the model through the client, so both kinds go through the same
LoadModel path and report the same WorkerInfo.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Protocol

from cairn.services.scheduler.worker_client import GrpcWorkerClient, LocalWorkerClient, WorkerClient

log = logging.getLogger(__name__)

# Environment a worker needs to resolve registry references the way the scheduler does.
FORWARDED_ENV = ("CAIRN_REGISTRY",)


class Launcher(Protocol):
    """Starts empty workers and ends them; the pool closes their clients itself."""

    async def launch(self, worker_id: str) -> WorkerClient: ...

    async def terminate(self, worker_id: str) -> None: ...


class LocalLauncher:
    """Workers as ModelRunners in this process, one device each. Closing the
    client is all it takes to end one."""

    async def launch(self, worker_id: str) -> WorkerClient:
        return LocalWorkerClient(worker_id)

    async def terminate(self, worker_id: str) -> None:
        return None


def connect_ray(address: str = "", **init_options: Any) -> None:
    """Joins the Ray cluster at `address`, or starts a local one when empty;
    a no-op if this process is already connected. Workers inherit the
    registry address, so references resolve the same on every node."""
    import ray

    if ray.is_initialized():
        return
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    ray.init(
        address=address or None,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        runtime_env={"env_vars": env} if env else None,
        **init_options,
    )


def resolve_device(device: str) -> str:
    """The device kind actors are placed by: "auto" is whatever the cluster has."""
    if device != "auto":
        return device
    import ray

    resources = ray.cluster_resources()
    if resources.get("GPU", 0) >= 1:
        return "cuda"
    if resources.get("XPU", 0) >= 1:
        return "xpu"
    return "cpu"


class RayLauncher:
    """Workers as Ray actors (`cairn.services.worker.actor`), one per device,
    serving `cairn.v1.Worker` on their own gRPC port. With `tensor_parallel_size`
    > 1 a worker is a group of that many actors in a placement group on one
    node, rank 0 serving the API; it lives and dies as one."""

    def __init__(self, device: str = "auto", host: str = "127.0.0.1", tensor_parallel_size: int = 1) -> None:
        self.device = resolve_device(device)
        self.host = host
        self.tensor_parallel_size = tensor_parallel_size
        self.handles: dict[str, Any] = {}

    @property
    def actors(self) -> dict[str, Any]:
        """The actor serving each worker's API (rank 0 of a group)."""
        return {worker_id: handle.actor for worker_id, handle in self.handles.items()}

    async def launch(self, worker_id: str) -> WorkerClient:
        from cairn.services.worker.actor import spawn_group, spawn_worker

        if self.tensor_parallel_size == 1:
            handle = await asyncio.to_thread(spawn_worker, worker_id, self.device, self.host)
        else:
            size = self.tensor_parallel_size
            handle = await asyncio.to_thread(spawn_group, worker_id, self.device, self.host, size)
        self.handles[worker_id] = handle
        return GrpcWorkerClient(worker_id, handle.address)

    async def terminate(self, worker_id: str) -> None:
        from cairn.services.worker.actor import kill_worker

        handle = self.handles.pop(worker_id, None)
        if handle is not None:
            await asyncio.to_thread(kill_worker, handle)
