"""Test plumbing for the scheduler service: a background event loop, a scheduler served on
it (real Ray worker actors, real gRPC on loopback), async clients, and the workload whose
greedy tokens every configuration must reproduce."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from loopback import LoopThread

from cairn.common.channel import make_channel
from cairn.common.server import RunningServer, start_server
from cairn.services.scheduler.pool import WorkerPool
from cairn.services.scheduler.server import grpc_service, scheduler_services
from cairn.services.scheduler.service_config import SchedulerServiceConfig
from cairn.services.scheduler.worker_client import LocalWorkerClient, WorkerClient, WorkerLost
from cairn.services.worker.step import StepInput, StepOutput
from cairn.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

R = TypeVar("R")

BLOCK_SIZE = 4
MAX_MODEL_LEN = 256


@dataclass
class ServedPool:
    loop: LoopThread
    pool: WorkerPool
    running: RunningServer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def run(self, coro: Coroutine[Any, Any, R], timeout: float = 180) -> R:
        return self.loop.run(coro, timeout)

    @contextmanager
    def stub(self) -> Iterator[scheduler_pb2_grpc.SchedulerStub]:
        """A synchronous stub on a channel of its own."""
        with grpc.insecure_channel(self.address) as channel:
            yield scheduler_pb2_grpc.SchedulerStub(channel)


def service_config(model: str, **overrides: Any) -> SchedulerServiceConfig:
    settings: dict[str, Any] = {
        "model": model,
        "deployment": "tiny",
        "device": "cpu",
        "dtype": "float32",
        "block_size": BLOCK_SIZE,
        "max_model_len": MAX_MODEL_LEN,
        "max_num_seqs": 16,
        "max_num_batched_tokens": 32,
        "num_blocks": 512,
        "num_workers": 1,
        "health_check_interval_s": 0.5,
        "health_check_timeout_s": 2.0,
        "port": 0,
        "metrics_port": 0,
    }
    return SchedulerServiceConfig(**(settings | overrides))


class ControlledWorker(LocalWorkerClient):
    """The in-process worker with two test controls: steps wait while `gate` is
    closed, and after `fail_after` steps every step fails as a dead worker's would."""

    def __init__(self, worker_id: str, gate: asyncio.Event, fail_after: int | None) -> None:
        super().__init__(worker_id)
        self.gate = gate
        self.fail_after = fail_after
        self.steps = 0

    async def step(self, step: StepInput) -> StepOutput:
        await self.gate.wait()
        if self.fail_after is not None and self.steps >= self.fail_after:
            raise WorkerLost(f"worker {self.worker_id} was told to die")
        self.steps += 1
        return await super().step(step)


class ControlledLauncher:
    """In-process workers (no Ray) under test control; `fail_after[i]` applies to the
    i-th worker launched."""

    def __init__(self, fail_after: dict[int, int] | None = None) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_after = fail_after or {}
        self.launched: list[ControlledWorker] = []

    async def launch(self, worker_id: str) -> WorkerClient:
        worker = ControlledWorker(worker_id, self.gate, self.fail_after.get(len(self.launched)))
        self.launched.append(worker)
        return worker

    async def terminate(self, worker_id: str) -> None:
        return None


def local_pool(config: SchedulerServiceConfig, launcher: ControlledLauncher, **options: Any) -> WorkerPool:
    return WorkerPool(
        launcher,
        config,
        config.model,
        config.deployment_name,
        max_queue=config.max_queue,
        health_check_interval_s=config.health_check_interval_s,
        **options,
    )


@contextmanager
def serve_pool(loop: LoopThread, config: SchedulerServiceConfig, pool: WorkerPool) -> Iterator[ServedPool]:
    """`pool` behind the scheduler's gRPC servicer on an ephemeral port."""

    async def start() -> RunningServer:
        await pool.start(config.num_workers)
        return await start_server(config, [grpc_service(pool)])

    running = loop.run(start())
    try:
        yield ServedPool(loop, pool, running)
    finally:
        loop.run(running.stop(None))
        loop.run(pool.close())


@contextmanager
def serve(loop: LoopThread, config: SchedulerServiceConfig) -> Iterator[ServedPool]:
    """The scheduler service as `cairn scheduler serve` builds it, on an ephemeral port."""
    built = scheduler_services(config)

    async def start() -> tuple[WorkerPool, RunningServer]:
        services = await built.__aenter__()
        return services[0].servicer.pool, await start_server(config, services)

    pool, running = loop.run(start())
    try:
        yield ServedPool(loop, pool, running)
    finally:
        loop.run(running.stop(None))
        loop.run(built.__aexit__(None, None, None))


@dataclass
class Spec:
    prompt: list[int]
    max_tokens: int


# The greedy oracle (see conftest's `reference` fixture).
Reference = Callable[[list["Spec"]], list[list[int]]]


def workload(count: int, seed: int, max_tokens: tuple[int, int]) -> list[Spec]:
    """Mixed prompt lengths (1 to ~100 tokens), many sharing a system-prompt-like prefix."""
    rng = random.Random(seed)
    shared = [rng.randrange(10, 2000) for _ in range(40)]
    specs = []
    for _ in range(count):
        prefix = shared[: rng.choice([0, 0, 8, 17, 40])]
        tail = [rng.randrange(10, 2000) for _ in range(rng.choice([1, 2, 5, 9, 16, 31, 60]))]
        specs.append(Spec(prefix + tail, rng.randint(*max_tokens)))
    return specs


def greedy_request(request_id: str, spec: Spec, **stop: Any) -> scheduler_pb2.ScheduleRequest:
    return scheduler_pb2.ScheduleRequest(
        request_id=request_id,
        prompt_token_ids=spec.prompt,
        sampling=common_pb2.SamplingParams(temperature=0.0),
        stop=common_pb2.StopCriteria(max_tokens=spec.max_tokens, **stop),
    )


@dataclass
class Collected:
    """Everything one Generate stream delivered."""

    tokens: dict[int, list[int]] = field(default_factory=dict)
    finish: dict[int, int] = field(default_factory=dict)
    responses: list[scheduler_pb2.ScheduleResponse] = field(default_factory=list)

    def add(self, response: scheduler_pb2.ScheduleResponse) -> None:
        self.responses.append(response)
        for seq in response.sequences:
            assert seq.index not in self.finish, f"sequence {seq.index} got tokens after it finished"
            self.tokens.setdefault(seq.index, []).extend(t.id for t in seq.tokens)
            if seq.finish_reason:
                self.finish[seq.index] = seq.finish_reason


async def generate_all(
    address: str,
    requests: list[scheduler_pb2.ScheduleRequest],
    on_response: Callable[[int, scheduler_pb2.ScheduleResponse], Any] | None = None,
) -> list[Collected]:
    """Runs every request as its own concurrent Generate stream; `on_response(i, response)`
    (maybe async) sees each message as it arrives."""
    async with make_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)

        async def one(index: int, request: scheduler_pb2.ScheduleRequest) -> Collected:
            collected = Collected()
            async for response in stub.Generate(request):
                collected.add(response)
                if on_response is not None:
                    result = on_response(index, response)
                    if asyncio.iscoroutine(result):
                        await result
            return collected

        return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Polls until `condition()` holds; fails the test naming `what` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
