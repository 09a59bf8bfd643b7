"""The engine of one replica: its scheduling policy, its block pool and its worker,
driven by one asyncio task.

The loop schedules a step, hands it to the worker, and while the worker runs it
(on a thread, or over gRPC) delivers the previous step's deltas to the
requests' sinks; then it applies the step's output. The policy is never
touched concurrently: requests and aborts come in on the same event loop, and
the policy accepts both while a step is in flight. With `num_scheduler_steps`
> 1 an all-decode batch runs several steps per worker call, which keeps the
per-token cost of the loop and the transport small.

A request with a LoRA adapter the worker does not hold waits beside the
policy until its adapter is loaded. The loop frees a slot between two steps
(`AdapterSlots` picks the adapter to unload, never one a registered request
uses, and only once the worker has dropped every finished sequence), then
loads the adapter while the other requests keep stepping; the waiting
requests join the policy when the load is done. One load at a time per
replica.

When the worker fails, the loop stops and reports it; the requests still
registered are then the pool's to move elsewhere (`take_requests`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from cairn.common.errors import CairnError, FailedPrecondition, InvalidArgument, Unavailable
from cairn.services.scheduler.adapter_slots import AdapterSlots
from cairn.services.scheduler.block_manager import BlockManager
from cairn.services.scheduler.metrics import EngineMetrics
from cairn.services.scheduler.output import RequestOutput, SampleOutput
from cairn.services.scheduler.policy import Scheduler, SchedulerStats
from cairn.services.scheduler.sequence import FinishReason, Request, SequenceStatus
from cairn.services.scheduler.service_config import EngineOptions
from cairn.services.scheduler.worker_client import WorkerClient, WorkerInfo

log = logging.getLogger(__name__)

# Receives every delta of one request, the last one with finished=True. Called
# on the event loop; must not block.
Sink = Callable[[RequestOutput], None]
FailureHook = Callable[["Engine", BaseException], None]
# A request that cannot run after all (its adapter failed to load); it is off the replica already.
RejectHook = Callable[[Sink, CairnError], None]


class Engine:
    def __init__(
        self,
        name: str,
        scheduler: Scheduler,
        worker: WorkerClient,
        vocab_size: int,
        metrics: EngineMetrics,
        on_failure: FailureHook | None = None,
        *,
        max_loras: int = 0,
        on_reject: RejectHook | None = None,
    ) -> None:
        self.name = name
        self.scheduler = scheduler
        self.worker = worker
        self.vocab_size = vocab_size
        self.metrics = metrics
        self.on_failure = on_failure
        self.on_reject = on_reject
        self.failure: BaseException | None = None
        self.num_steps = 0
        self.adapters = AdapterSlots(max_loras)
        self._sinks: dict[str, Sink] = {}
        # Requests whose adapter is not loaded yet, per adapter, in arrival order.
        self._awaiting: dict[str, list[Request]] = {}
        self._adapter_of: dict[str, str] = {}
        self._loading: asyncio.Task[None] | None = None
        # A load that lost the worker: the loop fails with it.
        self._lost: BaseException | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_worker(
        cls,
        worker: WorkerClient,
        info: WorkerInfo,
        options: EngineOptions,
        metrics: EngineMetrics,
        on_failure: FailureHook | None = None,
        on_reject: RejectHook | None = None,
    ) -> Engine:
        """An engine sized by what its loaded worker reported."""
        config = options.scheduler_config(info.max_model_len, info.num_blocks)
        block_manager = BlockManager(info.num_blocks, info.block_size, config.enable_prefix_caching)
        scheduler = Scheduler(config, block_manager, info.eos_token_ids)
        return cls(
            info.worker_id,
            scheduler,
            worker,
            info.vocab_size,
            metrics,
            on_failure,
            max_loras=options.max_loras,
            on_reject=on_reject,
        )

    @property
    def block_manager(self) -> BlockManager:
        return self.scheduler.block_manager

    @property
    def num_requests(self) -> int:
        """Requests registered here and not finished: the replica's load."""
        return len(self._sinks)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"cairn-engine-{self.name}")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._loading) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._loading = None

    def add(self, request: Request, sink: Sink) -> None:
        """Queues a request; raises InvalidArgument (and friends) if it cannot run here."""
        if self.failure is not None:
            raise Unavailable(f"replica {self.name} has failed: {self.failure}")
        # A token id outside the vocabulary would fail the whole step on the worker.
        top = max(request.prompt_token_ids, default=0)
        if top >= self.vocab_size:
            raise InvalidArgument(f"prompt token id {top} is outside the vocabulary [0, {self.vocab_size})")
        request.sampling.validate(self.vocab_size)
        adapter = request.adapter
        if adapter is None or self.adapters.is_resident(adapter.name):
            self.scheduler.add_request(request)
        elif not self.adapters.enabled:
            raise FailedPrecondition(f"replica {self.name} serves no LoRA adapters (max_loras is 0)")
        else:
            self.scheduler.validate(request)
            self._awaiting.setdefault(adapter.name, []).append(request)
        if adapter is not None:
            self.adapters.acquire(adapter.name)
            self._adapter_of[request.request_id] = adapter.name
        self._sinks[request.request_id] = sink
        self._idle.clear()
        self._wake.set()

    @property
    def num_awaiting(self) -> int:
        """Requests waiting for their adapter to load."""
        return sum(len(requests) for requests in self._awaiting.values())

    def request_ids(self) -> list[str]:
        """Every request registered here and not finished."""
        return list(self._sinks)

    def abort(self, request_id: str) -> bool:
        """Ends a request now; its sink gets the final (ABORT) delta. Its blocks are
        free at once and the worker drops its state with the next step. False if
        the request is not live here (a finished one still gets its last delta)."""
        delta = self.scheduler.abort(request_id)
        if delta is None:
            request = self._take_awaiting(request_id)
            if request is None:
                return False
            delta = _aborted(request)
        self._wake.set()
        self._release(request_id)
        sink = self._sinks.pop(request_id, None)
        if sink is not None:
            sink(delta)
        return True

    def detach(self, request_id: str) -> Sink | None:
        """Takes a live request off this replica without telling its sink, so it
        can move elsewhere; returns the sink, or None if it is not live here."""
        if self.scheduler.abort(request_id) is None and self._take_awaiting(request_id) is None:
            return None
        self._wake.set()
        self._release(request_id)
        return self._sinks.pop(request_id, None)

    def take_requests(self) -> dict[str, Sink]:
        """After a failure: the requests left here and their sinks, now unregistered."""
        sinks, self._sinks = self._sinks, {}
        self._awaiting.clear()
        self._adapter_of.clear()
        self.adapters.clear()
        return sinks

    def unstarted_requests(self) -> list[str]:
        """Requests that have neither run nor sent anything: free to move at no cost."""
        return [
            rid
            for rid, request in self.scheduler.requests.items()
            if not request.first_output_sent and all(s.status is SequenceStatus.WAITING for s in request.seqs)
        ] + [request.request_id for requests in self._awaiting.values() for request in requests]

    async def wait_idle(self, timeout: float | None) -> bool:
        """Whether every request here finished within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def stats(self) -> SchedulerStats:
        stats = self.scheduler.stats()
        return dataclasses.replace(stats, waiting=stats.waiting + self.num_awaiting)

    async def _run(self) -> None:
        deltas: list[RequestOutput] = []
        try:
            while True:
                if self._lost is not None:
                    raise self._lost
                if self._awaiting and self._loading is None:
                    await self._start_adapter_load()
                step = self.scheduler.schedule()
                if step.num_preempted:
                    self.metrics.preempted(step.num_preempted)
                if step.is_empty:
                    self._wake.clear()
                    self._deliver(deltas)
                    deltas = []
                    if not self.scheduler.has_unfinished_requests() and not self._awaiting:
                        self._idle.set()
                    await self._wake.wait()
                    continue
                running = asyncio.ensure_future(self.worker.step(step.input))
                self._deliver(deltas)
                deltas = []
                try:
                    output = await running
                except asyncio.CancelledError:
                    running.cancel()
                    raise
                generated = self.scheduler.num_generated_tokens
                deltas = self.scheduler.update(step, output)
                self.num_steps += 1
                self.metrics.stepped(self.scheduler.num_generated_tokens - generated)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("replica %s failed: %s", self.name, exc, extra={"replica": self.name})
            self._deliver(deltas)
            self.failure = exc
            self._idle.set()
            if self.on_failure is not None:
                self.on_failure(self, exc)

    def _deliver(self, deltas: list[RequestOutput]) -> None:
        sinks = self._sinks
        for delta in deltas:
            if delta.finished:
                self._release(delta.request_id)
                sink = sinks.pop(delta.request_id, None)
            else:
                sink = sinks.get(delta.request_id)
            if sink is not None:
                sink(delta)

    async def _start_adapter_load(self) -> None:
        """Starts loading the adapter the oldest waiting request needs, once a slot can be had."""
        name = next(iter(self._awaiting))
        if self.adapters.full:
            victim = self.adapters.victim()
            if victim is None or self.scheduler.has_pending_frees:
                return
            try:
                await self.worker.unload_adapter(victim)
            except FailedPrecondition as error:
                # The worker still runs a sequence with it; the next step settles that.
                log.warning("replica %s could not unload adapter %s yet: %s", self.name, victim, error)
                return
            self.adapters.evicted(victim)
            self.metrics.adapter_evicted()
        self.adapters.reserve(name)
        self._loading = asyncio.create_task(
            self._load_adapter(name, self._awaiting[name][0].adapter.source), name=f"cairn-lora-{self.name}"
        )

    async def _load_adapter(self, name: str, source: str) -> None:
        try:
            info = await self.worker.load_adapter(name, source)
        except Unavailable as error:
            self._lost = error
        except CairnError as error:
            self.adapters.evicted(name)
            self._reject(self._awaiting.pop(name, []), error)
        else:
            self.adapters.loaded(name, info.rank)
            self.metrics.adapter_loaded()
            for request in self._awaiting.pop(name, []):
                self.scheduler.add_request(request)
            log.info("replica %s loaded adapter %s (rank %d)", self.name, name, info.rank)
        finally:
            self._loading = None
            self._wake.set()

    def _reject(self, requests: list[Request], error: CairnError) -> None:
        for request in requests:
            self._release(request.request_id)
            sink = self._sinks.pop(request.request_id, None)
            if sink is not None and self.on_reject is not None:
                self.on_reject(sink, error)

    def _take_awaiting(self, request_id: str) -> Request | None:
        name = self._adapter_of.get(request_id)
        requests = self._awaiting.get(name, []) if name is not None else []
        request = next((r for r in requests if r.request_id == request_id), None)
        if request is not None:
            requests.remove(request)
            if not requests:
                del self._awaiting[name]
        return request

    def _release(self, request_id: str) -> None:
        name = self._adapter_of.pop(request_id, None)
        if name is not None:
            self.adapters.release(name)


def _aborted(request: Request) -> RequestOutput:
    """The last delta of a request aborted before it reached the policy."""
    samples = [SampleOutput(i, [], [], FinishReason.ABORT) for i in range(request.n)]
    return RequestOutput(request.request_id, samples, finished=True)
