"""The worker pool of one deployment: replicas, each a worker with its own engine
(policy + block pool), and the requests streaming across them.

- Placement: a request goes to the healthy replica with the longest cached
  prefix, then the least load (`placement`).
- Health: every `health_check_interval_s` each worker answers a gRPC health
  check; `health_check_failures` failures in a row, or a step that fails,
  mark it DEAD. Its requests move to other replicas (`RequestStream`) and a
  replacement starts, so the pool keeps its configured size.
- Scaling: `scale(n)` starts workers (returning once they are loaded) or
  drains some: a draining replica takes no new requests, hands its queued
  ones to the others at once, and gives its running ones `drain_timeout_s`
  to finish before they move too. In a cluster a NodeScaler (KubeRay) is
  asked for the nodes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cairn.common.errors import (
    AlreadyExists,
    CairnError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from cairn.services.scheduler import placement
from cairn.services.scheduler.adapters import SCAN_INTERVAL_S, AdapterCatalogue
from cairn.services.scheduler.engine import Engine, Sink
from cairn.services.scheduler.launcher import Launcher
from cairn.services.scheduler.metrics import DeploymentMetrics
from cairn.services.scheduler.request_stream import Piece, RequestStream
from cairn.services.scheduler.sequence import Request
from cairn.services.scheduler.service_config import EngineOptions
from cairn.services.scheduler.worker_client import WorkerClient, WorkerInfo

log = logging.getLogger(__name__)

MAX_RESPAWN_DELAY_S = 60.0


class WorkerHealth(str, enum.Enum):
    """A replica's health; the values match cairn.v1.WorkerHealth's names."""

    STARTING = "starting"
    HEALTHY = "healthy"
    DRAINING = "draining"
    DEAD = "dead"


@dataclass(eq=False)
class Replica:
    worker_id: str
    health: WorkerHealth = WorkerHealth.STARTING
    client: WorkerClient | None = None
    info: WorkerInfo | None = None
    engine: Engine | None = None
    failed_checks: int = 0


@dataclass(frozen=True)
class ReplicaState:
    """One replica as Stats and ListWorkers report it."""

    worker_id: str
    health: WorkerHealth
    device: str
    running: int
    num_blocks: int
    used_blocks: int
    cached_blocks: int
    steps: int


@dataclass(frozen=True)
class PoolStats:
    waiting: int
    running: int
    preemptions: int
    kv_usage: float
    prefix_cache_hit_rate: float
    finished_requests: int
    generated_tokens: int
    free_blocks: int
    workers: list[ReplicaState]


@dataclass(frozen=True)
class DeploymentInfo:
    deployment: str
    model: str
    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    block_size: int


class NodeScaler(Protocol):
    """Provides the nodes for `replicas` workers (e.g. a KubeRay worker group)."""

    async def scale(self, replicas: int) -> None: ...


class WorkerPool:
    def __init__(
        self,
        launcher: Launcher,
        options: EngineOptions,
        model: str,
        deployment: str,
        *,
        load_format: str = "safetensors",
        max_queue: int = 1024,
        health_check_interval_s: float = 2.0,
        health_check_timeout_s: float = 5.0,
        health_check_failures: int = 3,
        drain_timeout_s: float = 60.0,
        max_moves: int = 3,
        node_scaler: NodeScaler | None = None,
        lora_modules: Mapping[str, str] | None = None,
        lora_scan_interval_s: float = SCAN_INTERVAL_S,
    ) -> None:
        self.launcher = launcher
        self.options = options
        self.model = model
        self.deployment = deployment
        self.engine_config = options.engine_config(model, load_format)
        self.max_queue = max_queue
        self.health_check_interval_s = health_check_interval_s
        self.health_check_timeout_s = health_check_timeout_s
        self.health_check_failures = health_check_failures
        self.drain_timeout_s = drain_timeout_s
        self.max_moves = max_moves
        self.node_scaler = node_scaler
        self.metrics = DeploymentMetrics(deployment)
        self.adapters = AdapterCatalogue(
            deployment,
            model,
            lora_modules or {},
            enabled=options.max_loras > 0,
            scan_interval_s=lora_scan_interval_s,
        )
        self.replicas: list[Replica] = []
        self.target = 0
        self._info: DeploymentInfo | None = None
        self._streams: dict[str, RequestStream] = {}
        # Pieces waiting for a healthy replica (none was up when they came).
        self._unplaced: list[Piece] = []
        self._ids = itertools.count()
        self._scale_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._watcher: asyncio.Task | None = None
        self._closing = False
        # Back-off for replacing workers whose start failed (a model gone from the registry...).
        self._respawn_delay = 0.0
        self._respawn_at = 0.0
        # Figures of replicas that are gone, so totals never go backwards.
        self._retired_preemptions = 0
        self._retired_generated = 0
        self._finished_requests = 0
        self._prompt_tokens = 0
        self._cached_prompt_tokens = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self, num_workers: int) -> None:
        """Starts `num_workers` replicas (raising if they cannot load) and the health checks."""
        if self.adapters.enabled:
            await self.adapters.start()
        await self.scale(num_workers)
        self._watcher = asyncio.create_task(self._watch(), name=f"cairn-pool-{self.deployment}")

    async def close(self) -> None:
        self._closing = True
        tasks = [t for t in [self._watcher, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.adapters.close()
        for stream in list(self._streams.values()):
            stream.fail(Unavailable(f"deployment {self.deployment} is shutting down"))
        await asyncio.gather(*(self._retire(r) for r in self.replicas), return_exceptions=True)
        self.replicas.clear()

    @property
    def info(self) -> DeploymentInfo:
        if self._info is None:
            raise Unavailable(f"deployment {self.deployment} has no loaded worker yet")
        return self._info

    # ------------------------------------------------------------ requests

    def submit(self, request: Request) -> RequestStream:
        """Admits a request and returns its stream. Raises InvalidArgument for a
        request no replica could serve, RESOURCE_EXHAUSTED when max_queue
        sequences already wait, UNAVAILABLE when the pool has no workers."""
        if request.request_id in self._streams:
            raise AlreadyExists(f"request {request.request_id!r} is already live")
        if self.target == 0 and not self._live_replicas():
            raise Unavailable(f"deployment {self.deployment} has no workers; ScaleWorkers to 1 or more")
        if self.num_waiting() >= self.max_queue:
            raise ResourceExhausted(
                f"deployment {self.deployment} has {self.max_queue} sequences waiting (max_queue); "
                "retry later"
            )
        stream = RequestStream(request, self)
        self._place(stream.first_piece())
        self._streams[request.request_id] = stream
        self.metrics.admitted(len(request.prompt_token_ids))
        return stream

    def abort(self, request_id: str) -> bool:
        """Ends a live request; its stream gets a final ABORT delta. False if none is live."""
        stream = self._streams.get(request_id)
        if stream is None:
            return False
        self._unplaced = [piece for piece in self._unplaced if piece.stream is not stream]
        for piece in list(stream.pieces.values()):
            replica = self._replica_of(piece)
            if replica is not None:
                replica.engine.abort(piece.request_id)
        if not stream.finished:
            stream.abort_unplaced()
        return True

    def num_waiting(self) -> int:
        return len(self._unplaced) + sum(len(e.scheduler.waiting) + e.num_awaiting for e in self._engines())

    def adapter_ranks(self) -> dict[str, int]:
        """Adapters resident on some replica, by the name the workers know them, with their ranks."""
        return {name: rank for e in self._engines() for name, rank in e.adapters.resident.items()}

    def _place(self, piece: Piece) -> None:
        """Puts a piece on the best replica, or in the unplaced list when none is up."""
        request = piece.request
        adapter = request.adapter
        candidates = [
            placement.Candidate(
                r,
                r.engine.block_manager,
                r.engine.num_requests,
                adapter is not None and r.engine.adapters.is_resident(adapter.name),
            )
            for r in self.replicas
            if r.health is WorkerHealth.HEALTHY and r.engine.failure is None
        ]
        if not candidates:
            self._unplaced.append(piece)
            return
        hashes = placement.prompt_block_hashes(
            request.prompt_token_ids, self.options.block_size, request.cache_key
        )
        replica = placement.choose(candidates, hashes)
        replica.engine.add(request, piece)
        piece.replica = replica.worker_id

    def _replace_pieces(self, lost: list[Piece]) -> None:
        """Places the pieces that carry on `lost` (off their replica now), per stream."""
        by_stream: dict[RequestStream, list[Piece]] = {}
        for piece in lost:
            by_stream.setdefault(piece.stream, []).append(piece)
        for stream, pieces in by_stream.items():
            if stream.finished:
                continue
            if stream.num_moves >= self.max_moves:
                message = (
                    f"request {stream.request_id} moved {self.max_moves} times (workers lost or removed)"
                )
                self._fail(stream, Unavailable(message))
                continue
            for piece in stream.replacement_pieces(pieces):
                self.metrics.moved()
                try:
                    self._place(piece)
                except CairnError as err:
                    self._fail(stream, err)
                    break

    def _fail(self, stream: RequestStream, error: CairnError) -> None:
        for piece in list(stream.pieces.values()):
            replica = self._replica_of(piece)
            if replica is not None:
                replica.engine.detach(piece.request_id)
        self._unplaced = [piece for piece in self._unplaced if piece.stream is not stream]
        stream.fail(error)

    def _place_unplaced(self) -> None:
        pieces, self._unplaced = self._unplaced, []
        for piece in pieces:
            try:
                self._place(piece)
            except CairnError as err:
                self._fail(piece.stream, err)

    def _replica_of(self, piece: Piece) -> Replica | None:
        if piece.replica is None:
            return None
        for replica in self.replicas:
            if replica.worker_id == piece.replica and replica.engine is not None:
                return replica
        return None

    # StreamObserver
    def first_output(self, stream: RequestStream) -> None:
        self._prompt_tokens += len(stream.request.prompt_token_ids)
        self._cached_prompt_tokens += stream.num_cached_tokens
        if stream.first_token_time is not None:
            self.metrics.first_token(stream.first_token_time - stream.arrival)

    def finished(self, stream: RequestStream) -> None:
        self._streams.pop(stream.request_id, None)
        self._finished_requests += 1
        reason = stream.samples[0].finish_reason
        end = stream.finish_time or stream.arrival
        decode = end - stream.first_token_time if stream.first_token_time is not None else 0.0
        longest = max(len(s.token_ids) for s in stream.samples)
        self.metrics.finished(reason.value if reason else "error", end - stream.arrival, decode, longest)

    # ------------------------------------------------------------ replicas

    async def scale(self, replicas: int) -> list[ReplicaState]:
        """Grows or shrinks the pool to `replicas` workers; returns once new ones
        are loaded and removed ones drained."""
        if replicas < 0:
            raise InvalidArgument(f"replicas must be >= 0, got {replicas}")
        async with self._scale_lock:
            self.target = replicas
            alive = self._live_replicas()
            if len(alive) < replicas:
                if self.node_scaler is not None:
                    await self.node_scaler.scale(replicas)
                await self._grow(replicas - len(alive))
            elif len(alive) > replicas:
                await self._shrink(alive, len(alive) - replicas)
                if self.node_scaler is not None:
                    await self.node_scaler.scale(replicas)
            self.replicas = [r for r in self.replicas if r.health is not WorkerHealth.DEAD]
            if replicas == 0:
                for piece in self._unplaced:
                    self._fail(piece.stream, Unavailable(f"deployment {self.deployment} scaled to 0 workers"))
        return self.workers()

    def _live_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.health in (WorkerHealth.STARTING, WorkerHealth.HEALTHY)]

    def _engines(self) -> list[Engine]:
        return [r.engine for r in self.replicas if r.engine is not None and r.health is not WorkerHealth.DEAD]

    async def _grow(self, count: int) -> None:
        results = await asyncio.gather(*(self._start_replica() for _ in range(count)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _start_replica(self) -> None:
        worker_id = f"{self.deployment}-{next(self._ids)}"
        replica = Replica(worker_id)
        self.replicas.append(replica)
        try:
            replica.client = await self.launcher.launch(worker_id)
            info = await replica.client.load(self.engine_config)
            self._check_compatible(info)
            metrics = self.metrics.engine
            engine = Engine.for_worker(
                replica.client, info, self.options, metrics, self._on_engine_failure, self._on_reject
            )
        except BaseException:
            if replica in self.replicas:
                self.replicas.remove(replica)
            await self._retire(replica)
            raise
        engine.start()
        replica.info, replica.engine = info, engine
        replica.health = WorkerHealth.HEALTHY
        if self._info is None:
            self._info = DeploymentInfo(
                self.deployment,
                info.model,
                engine.scheduler.config.max_model_len,
                info.vocab_size,
                info.eos_token_ids,
                info.block_size,
            )
        log.info("worker %s is up: %d KV blocks on %s", worker_id, info.num_blocks, info.device)
        dead = next((r for r in self.replicas if r.health is WorkerHealth.DEAD), None)
        if dead is not None:
            self.replicas.remove(dead)
        self._place_unplaced()

    def _check_compatible(self, info: WorkerInfo) -> None:
        if info.block_size != self.options.block_size:
            raise FailedPrecondition(
                f"worker {info.worker_id} uses {info.block_size}-token blocks, "
                f"the deployment {self.options.block_size}"
            )
        known = self._info
        if known is not None and (info.vocab_size, info.eos_token_ids) != (
            known.vocab_size,
            known.eos_token_ids,
        ):
            raise FailedPrecondition(f"worker {info.worker_id} loaded a different model than {known.model}")

    async def _shrink(self, alive: list[Replica], count: int) -> None:
        # Under the scale lock every live replica is loaded: starts finish inside it.
        victims = sorted(alive, key=lambda r: r.engine.num_requests)[:count]
        for replica in victims:
            replica.health = WorkerHealth.DRAINING
        for replica in victims:
            self._move_off(replica, replica.engine.unstarted_requests())
        await asyncio.gather(*(self._drain(r) for r in victims))

    async def _drain(self, replica: Replica) -> None:
        engine = replica.engine
        if not await engine.wait_idle(self.drain_timeout_s) and replica.health is WorkerHealth.DRAINING:
            self._move_off(replica, engine.request_ids())
        if replica in self.replicas:
            self.replicas.remove(replica)
            await self._retire(replica)

    def _move_off(self, replica: Replica, request_ids: Iterable[str]) -> None:
        lost = [sink for rid in request_ids if isinstance(sink := replica.engine.detach(rid), Piece)]
        self._replace_pieces(lost)

    async def _retire(self, replica: Replica) -> None:
        """Stops a replica's engine and worker, keeping its totals."""
        engine = replica.engine
        if engine is not None:
            await engine.stop()
            self._retired_preemptions += engine.scheduler.num_preemptions
            self._retired_generated += engine.scheduler.num_generated_tokens
            replica.engine = None
        if replica.client is not None:
            with contextlib.suppress(Exception):
                await replica.client.close()
        try:
            await self.launcher.terminate(replica.worker_id)
        except Exception:
            log.exception("could not terminate worker %s", replica.worker_id)

    def _on_reject(self, sink: Sink, error: CairnError) -> None:
        if isinstance(sink, Piece):
            self._fail(sink.stream, error)

    def _on_engine_failure(self, engine: Engine, error: BaseException) -> None:
        replica = next((r for r in self.replicas if r.engine is engine), None)
        if replica is not None:
            self._spawn(self._lose(replica, f"its step failed: {error}"))

    async def _lose(self, replica: Replica, reason: str) -> None:
        """A worker died: its requests move on and a replacement starts."""
        if replica.health is WorkerHealth.DEAD or replica.engine is None:
            return
        draining = replica.health is WorkerHealth.DRAINING
        replica.health = WorkerHealth.DEAD
        log.warning("worker %s is dead (%s); moving its requests", replica.worker_id, reason)
        self.metrics.worker_failed()
        engine = replica.engine
        await engine.stop()
        lost = [sink for sink in engine.take_requests().values() if isinstance(sink, Piece)]
        self._replace_pieces(lost)
        await self._retire(replica)
        if draining:
            self.replicas.remove(replica)
        self._spawn(self._keep_size())

    async def _keep_size(self) -> None:
        """Starts workers until the pool has its target size. A failed start is
        retried by the health checks, backing off up to MAX_RESPAWN_DELAY_S."""
        async with self._scale_lock:
            missing = self.target - len(self._live_replicas())
            if missing <= 0:
                self.replicas = [r for r in self.replicas if r.health is not WorkerHealth.DEAD]
                return
            try:
                await self._grow(missing)
            except Exception as err:
                self._respawn_delay = min(2 * self._respawn_delay or 1.0, MAX_RESPAWN_DELAY_S)
                self._respawn_at = time.monotonic() + self._respawn_delay
                log.error("cannot start a worker (next try in %.0f s): %s", self._respawn_delay, err)
            else:
                self._respawn_delay = 0.0

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._closing:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool task failed: %s", task.exception())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.health_check_interval_s)
            checked = [r for r in self.replicas if r.health in (WorkerHealth.HEALTHY, WorkerHealth.DRAINING)]
            results = await asyncio.gather(
                *(r.client.check_health(self.health_check_timeout_s) for r in checked), return_exceptions=True
            )
            for replica, ok in zip(checked, results, strict=True):
                replica.failed_checks = 0 if ok is True else replica.failed_checks + 1
                if replica.failed_checks >= self.health_check_failures:
                    await self._lose(replica, f"{replica.failed_checks} health checks failed")
            missing = len(self._live_replicas()) < self.target
            if missing and not self._scale_lock.locked() and time.monotonic() >= self._respawn_at:
                self._spawn(self._keep_size())
            self._refresh_metrics()

    def _refresh_metrics(self) -> None:
        stats = self.stats()
        by_health = {h.value: 0 for h in WorkerHealth}
        for worker in stats.workers:
            by_health[worker.health.value] += 1
        self.metrics.refresh(
            stats.waiting,
            stats.running,
            stats.kv_usage,
            stats.prefix_cache_hit_rate,
            stats.generated_tokens,
            by_health,
        )

    # ------------------------------------------------------------ figures

    def workers(self) -> list[ReplicaState]:
        states = []
        for r in self.replicas:
            if r.engine is None:
                states.append(
                    ReplicaState(r.worker_id, r.health, r.info.device if r.info else "", 0, 0, 0, 0, 0)
                )
                continue
            bm = r.engine.block_manager
            states.append(
                ReplicaState(
                    r.worker_id,
                    r.health,
                    r.info.device,
                    len(r.engine.scheduler.running),
                    bm.num_blocks,
                    bm.num_blocks - bm.num_free_blocks,
                    bm.num_cached_free_blocks,
                    r.engine.num_steps,
                )
            )
        return states

    def stats(self) -> PoolStats:
        engines = self._engines()
        figures = [e.stats() for e in engines]
        total_blocks = sum(e.block_manager.num_blocks for e in engines)
        free_blocks = sum(f.free_blocks for f in figures)
        return PoolStats(
            waiting=len(self._unplaced) + sum(f.waiting for f in figures),
            running=sum(f.running for f in figures),
            preemptions=self._retired_preemptions + sum(f.preemptions for f in figures),
            kv_usage=(total_blocks - free_blocks) / total_blocks if total_blocks else 0.0,
            prefix_cache_hit_rate=self._cached_prompt_tokens / self._prompt_tokens
            if self._prompt_tokens
            else 0.0,
            finished_requests=self._finished_requests,
            generated_tokens=self._retired_generated + sum(f.generated_tokens for f in figures),
            free_blocks=free_blocks,
            workers=self.workers(),
        )
