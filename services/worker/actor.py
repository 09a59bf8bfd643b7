"""Workers as Ray actors: one actor per device, serving `cairn.v1.Worker` over gRPC.

The actor is asynchronous, so the gRPC server it starts lives on the actor's
own event loop for as long as the actor does. Placement follows the device:
`num_gpus=1` for CUDA, the custom resource `XPU` for Intel GPUs (declare it
when starting Ray on XPU nodes: `ray start --resources '{"XPU": N}'`), one CPU
otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cairn.common.config import ServiceConfig
from cairn.common.server import RunningServer, start_server
from cairn.services.worker.server import WorkerServicer, grpc_service


def actor_options(device: str) -> dict[str, Any]:
    """Ray resources one worker needs on `device` ("cpu", "cuda", "xpu")."""
    if device == "cuda":
        return {"num_gpus": 1, "num_cpus": 1}
    if device == "xpu":
        return {"resources": {"XPU": 1}, "num_cpus": 1}
    return {"num_cpus": 1}


class WorkerActor:
    """Ray actor body. Created through `spawn_worker`, which applies `ray.remote`."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.server: RunningServer | None = None

    async def start(self, host: str = "127.0.0.1") -> str:
        """Starts the gRPC server on an ephemeral port; returns its address."""
        import ray

        if self.server is None:
            config = ServiceConfig(host=host, port=0, metrics_port=0, log_format="json")
            self.server = await start_server(config, [grpc_service(WorkerServicer(self.worker_id))])
        node_ip = host if host != "0.0.0.0" else ray.util.get_node_ip_address()
        return f"{node_ip}:{self.server.port}"

    async def ping(self) -> str:
        return self.worker_id


@dataclass
class WorkerHandle:
    worker_id: str
    actor: Any
    address: str


def spawn_worker(worker_id: str, device: str = "cpu", host: str = "127.0.0.1") -> WorkerHandle:
    """Creates a worker actor on a node with `device` and waits for its gRPC address."""
    import ray

    actor_cls = ray.remote(WorkerActor)
    actor = actor_cls.options(name=None, max_restarts=0, **actor_options(device)).remote(worker_id)
    address = ray.get(actor.start.remote(host))
    return WorkerHandle(worker_id, actor, address)
