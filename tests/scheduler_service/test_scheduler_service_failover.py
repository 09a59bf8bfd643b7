"""Acceptance: the pool survives losing a worker actor mid-generation and scaling under load.
Requests keep streaming without an error and, being greedy, end with the same tokens as
when each runs alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from loopback import LoopThread
from scheduler_service_harness import (
    Reference,
    generate_all,
    greedy_request,
    serve,
    service_config,
    wait_for,
    workload,
)

from cairn.common.channel import make_channel
from cairn.services.scheduler.pool import WorkerHealth
from cairn.v1 import scheduler_pb2, scheduler_pb2_grpc

LONG = workload(24, seed=11, max_tokens=(30, 48))


def _tokens(results: list) -> list[list[int]]:
    return [r.tokens.get(0, []) for r in results]


def test_killing_a_worker_mid_generation_moves_its_requests_without_a_trace(
    ray_local: Any, loop: LoopThread, tiny_model_dir: Path, reference: Reference
) -> None:
    expected = reference(LONG)
    config = service_config(str(tiny_model_dir), num_workers=2, max_num_seqs=4)
    with serve(loop, config) as served:
        pool = served.pool
        killed: dict[str, Any] = {}
        responses = 0

        def kill_when_busy(index: int, response: scheduler_pb2.ScheduleResponse) -> None:
            nonlocal responses
            responses += 1
            if killed or responses < 12:
                return

            def started(replica: Any) -> int:
                return sum(r.first_output_sent for r in replica.engine.scheduler.requests.values())

            replica = max(pool.replicas, key=started)
            requests = replica.engine.scheduler.requests
            killed["id"] = replica.worker_id
            killed["started"] = [rid for rid, r in requests.items() if r.first_output_sent]
            killed["queued"] = [rid for rid, r in requests.items() if not r.first_output_sent]
            ray_local.kill(pool.launcher.actors[replica.worker_id])

        requests = [greedy_request(f"kill-{i}", spec) for i, spec in enumerate(LONG)]
        results = served.run(generate_all(served.address, requests, kill_when_busy))

        assert killed["started"], "the killed worker had no request mid-generation"
        assert _tokens(results) == expected
        assert all(set(r.finish) == {0} for r in results)

        def replaced() -> bool:
            workers = pool.workers()
            return len(workers) == 2 and all(w.health is WorkerHealth.HEALTHY for w in workers)

        wait_for(replaced, "a replacement worker")
        with served.stub() as stub:
            listed = stub.ListWorkers(scheduler_pb2.ListWorkersRequest()).workers
            stats = stub.Stats(scheduler_pb2.StatsRequest())
        assert killed["id"] not in {w.worker_id for w in listed}
        assert all(w.health == scheduler_pb2.WORKER_HEALTH_HEALTHY for w in listed)
        assert stats.finished_requests == len(LONG)
        assert stats.free_blocks == sum(w.num_blocks for w in listed)


def test_scaling_one_two_one_under_load_loses_nothing(
    loop: LoopThread, ray_local: Any, tiny_model_dir: Path, reference: Reference
) -> None:
    first, second = LONG[:14], LONG[14:]
    expected = reference(LONG)
    # A short drain: the removed replica's running requests move rather than finish there.
    config = service_config(str(tiny_model_dir), num_workers=1, max_num_seqs=4, drain_timeout_s=0.2)
    with serve(loop, config) as served:
        pool = served.pool

        async def scenario() -> tuple[list, list, list, list]:
            streaming = asyncio.Event()
            first_run = asyncio.ensure_future(
                generate_all(
                    served.address,
                    [greedy_request(f"a{i}", s) for i, s in enumerate(first)],
                    lambda i, r: streaming.set(),
                )
            )
            await streaming.wait()
            async with make_channel(served.address) as channel:
                stub = scheduler_pb2_grpc.SchedulerStub(channel)
                grown = (await stub.ScaleWorkers(scheduler_pb2.ScaleWorkersRequest(replicas=2))).workers
                second_run = asyncio.ensure_future(
                    generate_all(served.address, [greedy_request(f"b{i}", s) for i, s in enumerate(second)])
                )
                while not all(w.running for w in pool.workers()):
                    await asyncio.sleep(0.01)
                shrunk = (await stub.ScaleWorkers(scheduler_pb2.ScaleWorkersRequest(replicas=1))).workers
            return await first_run, await second_run, list(grown), list(shrunk)

        first_results, second_results, grown, shrunk = served.run(scenario())
        stats = pool.stats()

    assert [w.health for w in grown] == [scheduler_pb2.WORKER_HEALTH_HEALTHY] * 2
    assert len(shrunk) == 1 and shrunk[0].health == scheduler_pb2.WORKER_HEALTH_HEALTHY
    assert _tokens(first_results) + _tokens(second_results) == expected
    assert stats.finished_requests == len(LONG)
    assert stats.free_blocks == sum(w.num_blocks for w in stats.workers)
