"""The pool's own rules, on in-process workers: placement, how a request continues after its
replica is lost (whole or per sample), and the limit on how often it may move."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from loopback import LoopThread
from scheduler_service_harness import ControlledLauncher, Reference, local_pool, service_config, workload

from cairn.common.errors import Unavailable
from cairn.services.scheduler import placement
from cairn.services.scheduler.block_manager import BlockManager
from cairn.services.scheduler.output import RequestOutput, SampleOutput
from cairn.services.scheduler.pool import WorkerHealth, WorkerPool
from cairn.services.scheduler.request_stream import RequestStream
from cairn.services.scheduler.sequence import FinishReason, Request
from cairn.services.scheduler.server import start_pool
from cairn.services.scheduler.service_config import SchedulerServiceConfig
from cairn.services.worker.sampling_params import SamplingParams

SPECS = workload(16, seed=3, max_tokens=(8, 24))


async def _run(pool: WorkerPool, requests: list[Request]) -> list[dict[int, list[int]]]:
    async def one(request: Request) -> dict[int, list[int]]:
        tokens: dict[int, list[int]] = {}
        async for output in pool.submit(request):
            for sample in output.samples:
                tokens.setdefault(sample.index, []).extend(sample.token_ids)
        return tokens

    return await asyncio.gather(*(one(r) for r in requests))


def test_requests_of_a_failed_worker_continue_elsewhere_with_the_same_tokens(
    loop: LoopThread, tiny_model_dir: Path, reference: Reference
) -> None:
    expected = reference(SPECS)
    # The first worker dies after a few steps, with requests running and queued on it.
    launcher = ControlledLauncher(fail_after={0: 5})
    config = service_config(str(tiny_model_dir), num_workers=2, max_num_seqs=4)
    pool = local_pool(config, launcher)
    greedy = [SamplingParams(temperature=0.0, max_tokens=s.max_tokens) for s in SPECS]
    # n = 2 greedy: both samples continue separately and must still agree with the oracle.
    requests = [
        Request(f"r{i}", s.prompt, p, n=1 + i % 2) for i, (s, p) in enumerate(zip(SPECS, greedy, strict=True))
    ]

    async def scenario() -> list[dict[int, list[int]]]:
        await pool.start(config.num_workers)
        try:
            return await _run(pool, requests)
        finally:
            while len(launcher.launched) < 3 or any(
                w.health is not WorkerHealth.HEALTHY for w in pool.workers()
            ):
                await asyncio.sleep(0.01)
            await pool.close()

    results = loop.run(scenario())
    for tokens, want, request in zip(results, expected, requests, strict=True):
        assert tokens == dict.fromkeys(range(request.n), want)
    assert launcher.launched[0].steps == 5


def test_a_request_that_keeps_losing_workers_fails_as_unavailable(
    loop: LoopThread, tiny_model_dir: Path
) -> None:
    launcher = ControlledLauncher(fail_after=dict.fromkeys(range(8), 2))
    config = service_config(str(tiny_model_dir), num_workers=1)
    pool = local_pool(config, launcher)

    async def scenario() -> None:
        await pool.start(1)
        try:
            never_ends = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
            await _run(pool, [Request("doomed", [5, 6, 7], never_ends)])
        finally:
            await pool.close()

    with pytest.raises(Unavailable, match="moved 3 times"):
        loop.run(scenario())
    assert len(launcher.launched) >= 4


def test_scaling_to_zero_refuses_new_requests(loop: LoopThread, tiny_model_dir: Path) -> None:
    config = service_config(str(tiny_model_dir), num_workers=1)
    pool = local_pool(config, ControlledLauncher())

    async def scenario() -> list:
        await pool.start(1)
        try:
            assert await pool.scale(0) == []
            with pytest.raises(Unavailable, match="no workers"):
                pool.submit(Request("late", [5], SamplingParams(max_tokens=2)))
            return await pool.scale(1)
        finally:
            await pool.close()

    (worker,) = loop.run(scenario())
    assert worker.health is WorkerHealth.HEALTHY


def _manager_with(prompt: list[int], num_blocks: int = 32) -> BlockManager:
    bm = BlockManager(num_blocks, 4)
    bm.allocate(0, len(prompt))
    bm.cache_blocks(0, prompt, len(prompt))
    bm.free(0)
    return bm


def test_placement_prefers_the_cached_prefix_then_the_least_load() -> None:
    prompt = list(range(100, 117))
    hashes = placement.prompt_block_hashes(prompt, 4, None)
    assert len(hashes) == 4, "the last token's block is never a hit"
    cold, warm = BlockManager(32, 4), _manager_with(prompt[:12])
    assert placement.cached_blocks(warm, hashes) == 3
    Candidate = placement.Candidate
    assert placement.choose([Candidate("cold", cold, 0), Candidate("warm", warm, 3)], hashes) == "warm"
    # Affinity yields once the warm replica is far busier than the least loaded one.
    assert placement.choose([Candidate("cold", cold, 0), Candidate("warm", warm, 50)], hashes) == "cold"
    other = BlockManager(32, 4)
    assert placement.choose([Candidate("a", cold, 2), Candidate("b", other, 1)], hashes) == "b"
    assert placement.choose([], hashes) is None
    # A cache key separates namespaces: the same tokens under another key are no hit.
    assert placement.cached_blocks(warm, placement.prompt_block_hashes(prompt, 4, "lora-a")) == 0


class _Observer:
    def __init__(self) -> None:
        self.done: list[RequestStream] = []

    def first_output(self, stream: RequestStream) -> None:
        pass

    def finished(self, stream: RequestStream) -> None:
        self.done.append(stream)


def test_a_moved_request_continues_each_unfinished_sample_from_what_it_streamed() -> None:
    params = SamplingParams(temperature=0.8, seed=9, max_tokens=6, min_tokens=3, prompt_logprobs=1)
    observer = _Observer()
    stream = RequestStream(Request("r", [1, 2, 3], params, n=3), observer)
    whole = stream.first_piece()
    assert (whole.request_id, whole.request.n) == ("r", 3)
    # Nothing streamed yet: the whole request starts again under a new id.
    (again,) = stream.replacement_pieces([whole])
    assert (again.request_id, again.request.n, again.request.prompt_token_ids) == ("r~1", 3, [1, 2, 3])

    again(
        RequestOutput(
            "r~1",
            [
                SampleOutput(0, [7, 8], cumulative_logprob=-1.0),
                SampleOutput(1, [9, 10, 11, 12, 13, 14], finish_reason=FinishReason.LENGTH),
                SampleOutput(2, [], cumulative_logprob=0.0),
            ],
        )
    )
    pieces = stream.replacement_pieces([again])
    assert [p.request_id for p in pieces] == ["r~2.0", "r~2.2"]
    first, third = pieces
    assert first.request.prompt_token_ids == [1, 2, 3, 7, 8]
    assert (first.request.sampling.max_tokens, first.request.sampling.min_tokens) == (4, 1)
    assert first.request.sampling.prompt_logprobs is None and first.request.sampling.seed == 9
    assert third.request.sampling.seed == 11 and third.request.sampling.max_tokens == 6
    assert first.request.arrival_time == stream.request.arrival_time, "a moved request keeps its place"

    first(RequestOutput("r~2.0", [SampleOutput(0, [20], cumulative_logprob=-0.5)]))
    third(RequestOutput("r~2.2", [SampleOutput(0, [30], finish_reason=FinishReason.EOS)], finished=True))
    first(RequestOutput("r~2.0", [SampleOutput(0, [21], finish_reason=FinishReason.LENGTH)], finished=True))
    assert stream.finished and observer.done == [stream]
    assert [s.token_ids for s in stream.samples] == [[7, 8, 20, 21], [9, 10, 11, 12, 13, 14], [30]]
    assert stream.samples[0].cumulative_logprob == pytest.approx(-1.0)

    async def deltas() -> list[RequestOutput]:
        return [output async for output in stream]

    outputs = asyncio.run(deltas())
    assert [[(s.index, s.token_ids) for s in o.samples] for o in outputs[-3:]] == [
        [(0, [20])],
        [(2, [30])],
        [(0, [21])],
    ]
    assert outputs[-1].finished and not outputs[-2].finished


def test_a_request_waits_out_a_pool_without_a_healthy_replica(loop: LoopThread, tiny_model_dir: Path) -> None:
    # The only worker dies on its first step; the request waits for the replacement.
    launcher = ControlledLauncher(fail_after={0: 0})
    config = service_config(str(tiny_model_dir), num_workers=1)
    pool = local_pool(config, launcher)

    async def scenario() -> list[dict[int, list[int]]]:
        await pool.start(1)
        try:
            return await _run(
                pool, [Request("patient", [5, 6], SamplingParams(temperature=0.0, max_tokens=3))]
            )
        finally:
            await pool.close()

    (tokens,) = loop.run(scenario())
    assert len(tokens[0]) == 3
    assert len(launcher.launched) == 2 and launcher.launched[0].steps == 0


class _WorkerGroup:
    """A KubeRay worker group as the pool sees it: it holds a worker count that the pool
    resizes and that an operator may change."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.resized: list[int] = []

    async def scale(self, replicas: int) -> None:
        self.resized.append(replicas)
        self.workers = replicas

    async def desired_workers(self) -> int:
        return self.workers

    async def follow(self, on_change: Callable[[int], Awaitable[object]], workers: int) -> None:
        while True:
            if self.workers != workers:
                workers = self.workers
                await on_change(workers)
            await asyncio.sleep(0.01)


def test_the_node_scaler_grows_before_workers_start_and_shrinks_after_they_drain(
    loop: LoopThread, tiny_model_dir: Path
) -> None:
    group = _WorkerGroup(0)
    config = service_config(str(tiny_model_dir))
    pool = local_pool(config, ControlledLauncher(), node_scaler=group)

    async def scenario() -> tuple[int, int]:
        await pool.start(2)
        try:
            grown = len(pool.workers())
            await pool.scale(1)
            return grown, len(pool.workers())
        finally:
            await pool.close()

    assert loop.run(scenario()) == (2, 1)
    assert group.resized == [2, 1]


def test_in_a_cluster_the_pool_starts_from_and_follows_the_worker_group(
    loop: LoopThread, tiny_model_dir: Path
) -> None:
    given = service_config(str(tiny_model_dir))
    # The chart sets no worker count: the group holds it.
    config = SchedulerServiceConfig(**given.model_dump(exclude={"num_workers"}))
    group = _WorkerGroup(2)
    pool = local_pool(config, ControlledLauncher(), node_scaler=group)

    async def scenario() -> tuple[int, int]:
        following = await start_pool(pool, config, group)
        try:
            started = len(pool.workers())
            group.workers = 1  # kubectl patch, helm upgrade or the Ray autoscaler
            while len(pool.workers()) != 1:
                await asyncio.sleep(0.01)
            return started, pool.target
        finally:
            following.cancel()
            await pool.close()

    assert loop.run(scenario()) == (2, 1)
    explicit = service_config(str(tiny_model_dir), num_workers=1)

    async def pinned() -> int:
        pool = local_pool(explicit, ControlledLauncher(), node_scaler=_WorkerGroup(3))
        try:
            assert await start_pool(pool, explicit, pool.node_scaler) is None
            return len(pool.workers())
        finally:
            await pool.close()

    assert loop.run(pinned()) == 1
