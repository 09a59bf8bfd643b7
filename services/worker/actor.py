"""Workers as Ray actors: one actor per device, serving `cairn.v1.Worker` over gRPC.

The actor is asynchronous, so the gRPC server it starts lives on the actor's
own event loop for as long as the actor does. Placement follows the device:
`num_gpus=1` for CUDA, the custom resource `XPU` for Intel GPUs (declare it
when starting Ray on XPU nodes: `ray start --resources '{"XPU": N}'`), one CPU
otherwise.

A tensor-parallel replica (`spawn_group`) is a placement group of one bundle
per rank, packed on one node, with an actor per bundle. Rank 0 serves the gRPC
API and drives the others (`group.py`); ranks 1.. run the follower loop on a
thread of their actor, which keeps answering rank 0's liveness pings. When a
rank dies or the group breaks, rank 0 reports NOT_SERVING, so the scheduler's
health checks declare the worker dead, move its requests and replace the
whole group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from grpc_health.v1 import health_pb2

from cairn.common.config import ServiceConfig
from cairn.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from cairn.common.server import RunningServer, start_server
from cairn.services.worker.distributed import TensorParallel, free_port, init_tensor_parallel
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.group import GroupRunner, follow
from cairn.services.worker.server import WorkerServicer, grpc_service
from cairn.v1 import worker_pb2

log = logging.getLogger(__name__)

# Rank 0 pings the other ranks this often; one that does not answer in time is dead.
LIVENESS_INTERVAL_S = 1.0
LIVENESS_TIMEOUT_S = 10.0
# How long a tensor-parallel group may wait for a node with room for all its ranks.
PLACEMENT_TIMEOUT_S = 600.0


def actor_options(device: str) -> dict[str, Any]:
    """Ray resources one worker needs on `device` ("cpu", "cuda", "xpu")."""
    if device == "cuda":
        return {"num_gpus": 1, "num_cpus": 1}
    if device == "xpu":
        return {"resources": {"XPU": 1}, "num_cpus": 1}
    return {"num_cpus": 1}


class GroupServicer(WorkerServicer):
    """Rank 0's servicer: a model loads on every rank of the group (`GroupRunner`)."""

    def __init__(self, worker_id: str, tp: TensorParallel, device_index: int) -> None:
        super().__init__(worker_id)
        self.tp = tp
        self.device_index = device_index

    async def load(self, config: EngineConfig) -> worker_pb2.WorkerInfo:
        async with self._lock:
            if self.runner is not None:
                raise FailedPrecondition(f"worker {self.worker_id} already serves {self.runner.config.model}")
            runner = await asyncio.to_thread(GroupRunner, config, self.tp, self.device_index)
            await asyncio.to_thread(runner.load)
            await asyncio.to_thread(runner.profile_and_allocate_kv_cache)
            self.runner = runner
        return self.info()


def _join(
    rank: int, size: int, init_method: str, device: str, visible: str | None, index: int
) -> TensorParallel:
    """Joins the group as `rank`; on CUDA every rank sees all the group's GPUs (`visible`, in
    rank order), so NCCL can reach its peers directly, and takes GPU `index` among them."""
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    return init_tensor_parallel(
        rank, size, init_method, torch.device(device, index) if device != "cpu" else torch.device("cpu")
    )


class _Rank:
    """What every rank's actor answers while its group forms."""

    def accelerator_ids(self) -> list[str]:
        import ray

        return [str(i) for i in ray.get_gpu_ids()]


class WorkerActor(_Rank):
    """Ray actor body of a worker, or of rank 0 of a group. Created through `spawn_worker` or
    `spawn_group`, which apply `ray.remote`."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.server: RunningServer | None = None
        self.servicer: WorkerServicer | None = None
        self.tp: TensorParallel | None = None
        self.device_index = 0
        self._watch: asyncio.Task | None = None

    async def start(self, host: str = "127.0.0.1", followers: list[Any] | None = None) -> str:
        """Starts the gRPC server on an ephemeral port; returns its address. `followers`: the
        actors of ranks 1.. after `join`, whose liveness rank 0 watches."""
        import ray

        if self.server is None:
            if self.tp is None:
                self.servicer = WorkerServicer(self.worker_id)
            else:
                self.servicer = GroupServicer(self.worker_id, self.tp, self.device_index)
            config = ServiceConfig(host=host, port=0, metrics_port=0, log_format="json")
            self.server = await start_server(config, [grpc_service(self.servicer)])
            if followers:
                self._watch = asyncio.create_task(self._watch_group(followers))
        node_ip = host if host != "0.0.0.0" else ray.util.get_node_ip_address()
        return f"{node_ip}:{self.server.port}"

    async def ping(self) -> str:
        return self.worker_id

    def rendezvous(self) -> str:
        """Where the group's ranks meet: a free port on rank 0's node."""
        import ray

        ip = ray.util.get_node_ip_address()
        return f"tcp://{ip}:{free_port(ip)}"

    async def join(self, size: int, init_method: str, device: str, visible: str | None, index: int) -> None:
        self.device_index = index
        self.tp = await asyncio.to_thread(_join, 0, size, init_method, device, visible, index)

    async def _watch_group(self, followers: list[Any]) -> None:
        """Reports NOT_SERVING once a rank stops answering or the group broke, so the scheduler
        replaces the whole replica (its health checks only reach rank 0)."""
        while True:
            await asyncio.sleep(LIVENESS_INTERVAL_S)
            runner = self.servicer.runner
            reason = runner.broken if isinstance(runner, GroupRunner) else None
            if reason is None:
                try:
                    pings = [follower.ping.remote() for follower in followers]
                    await asyncio.wait_for(asyncio.gather(*pings), LIVENESS_TIMEOUT_S)
                except Exception as err:
                    reason = f"a rank is gone: {type(err).__name__}: {err}"
            if reason is not None:
                log.error("worker %s: tensor-parallel group out of service (%s)", self.worker_id, reason)
                await self.server.health.set("cairn.v1.Worker", health_pb2.HealthCheckResponse.NOT_SERVING)
                return


class FollowerActor(_Rank):
    """Ray actor body of ranks 1.. of a group: the follower loop runs on a thread, so the actor
    still answers rank 0's pings (and fails them once the loop has failed)."""

    def __init__(self, worker_id: str, rank: int) -> None:
        self.worker_id = worker_id
        self.rank = rank
        self.failure: str | None = None

    async def join(self, size: int, init_method: str, device: str, visible: str | None, index: int) -> None:
        tp = await asyncio.to_thread(_join, self.rank, size, init_method, device, visible, index)
        args = (tp, device, index)
        threading.Thread(target=self._follow, args=args, name="cairn-tp-follower", daemon=True).start()

    def _follow(self, tp: TensorParallel, device: str, index: int) -> None:
        try:
            # The current device is per thread: graph captures and syncs must find this rank's.
            if device != "cpu":
                torch.get_device_module(device).set_device(index)
            follow(tp, index)
        except BaseException as err:
            self.failure = f"{type(err).__name__}: {err}"
            log.exception("worker %s rank %d failed", self.worker_id, self.rank)

    async def ping(self) -> int:
        if self.failure is not None:
            raise Unavailable(f"rank {self.rank} failed: {self.failure}")
        return self.rank


@dataclass
class WorkerHandle:
    worker_id: str
    actor: Any
    address: str
    # A tensor-parallel group's other ranks, and the placement group holding them all.
    followers: list[Any] = field(default_factory=list)
    placement_group: Any = None


def spawn_worker(worker_id: str, device: str = "cpu", host: str = "127.0.0.1") -> WorkerHandle:
    """Creates a worker actor on a node with `device` and waits for its gRPC address."""
    import ray

    actor_cls = ray.remote(WorkerActor)
    actor = actor_cls.options(name=None, max_restarts=0, **actor_options(device)).remote(worker_id)
    address = ray.get(actor.start.remote(host))
    return WorkerHandle(worker_id, actor, address)


def spawn_group(worker_id: str, device: str, host: str, size: int) -> WorkerHandle:
    """A tensor-parallel worker of `size` ranks on one node (CPU or CUDA); waits until rank 0
    serves, and tears everything down again if any of it fails."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if device not in ("cpu", "cuda"):
        raise InvalidArgument(f"tensor-parallel workers run on CUDA or CPU devices, not {device}")
    options = actor_options(device)
    bundle = {"CPU": options["num_cpus"], **({"GPU": options["num_gpus"]} if device == "cuda" else {})}
    group = placement_group([bundle] * size, strategy="STRICT_PACK", name=f"cairn-{worker_id}")
    handle = WorkerHandle(worker_id, None, "", placement_group=group)
    try:
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            raise Unavailable(
                f"no node had room for a {size}-rank group ({bundle} per rank) "
                f"within {PLACEMENT_TIMEOUT_S:.0f} s"
            )

        def placed(cls: type, rank: int, *args: Any) -> Any:
            strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank)
            return (
                ray.remote(cls).options(max_restarts=0, scheduling_strategy=strategy, **options).remote(*args)
            )

        handle.actor = placed(WorkerActor, 0, worker_id)
        handle.followers = [placed(FollowerActor, rank, worker_id, rank) for rank in range(1, size)]
        ranks = [handle.actor, *handle.followers]
        visible, indices = None, [0] * size
        if device == "cuda":
            # Rank r takes the r-th visible GPU: rank 0 then runs on each thread's default device.
            visible = ",".join(own[0] for own in ray.get([rank.accelerator_ids.remote() for rank in ranks]))
            indices = list(range(size))
        init_method = ray.get(handle.actor.rendezvous.remote())
        ray.get(
            [
                r.join.remote(size, init_method, device, visible, i)
                for r, i in zip(ranks, indices, strict=True)
            ]
        )
        handle.address = ray.get(handle.actor.start.remote(host, handle.followers))
    except BaseException:
        kill_worker(handle)
        raise
    return handle


def kill_worker(handle: WorkerHandle) -> None:
    """Ends a worker: its actors and, for a group, its placement group."""
    import ray
    from ray.util.placement_group import remove_placement_group

    for actor in [handle.actor, *handle.followers]:
        if actor is not None:
            ray.kill(actor, no_restart=True)
    if handle.placement_group is not None:
        remove_placement_group(handle.placement_group)
