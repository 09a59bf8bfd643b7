"""Acceptance: the scheduler serves a 2-rank replica end to end on CPU through Ray (a placement
group of two actors, gloo between them) with one device's greedy tokens; when one rank's actor
dies mid-generation, its requests finish on a replacement group and no client sees an error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from tp_serving import Loop, generate_greedy, one_device_greedy, prompts, serve, service_config

from cairn.services.scheduler.pool import WorkerHealth

SPECS = prompts(10, seed=3)


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"deployment": "tiny-tp"}) or 0.0


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    thread = Loop()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def expected(tiny_model_dir: Path) -> list[list[int]]:
    return one_device_greedy(tiny_model_dir, SPECS)


def test_two_rank_replica_serves_one_devices_tokens(
    ray_local: Any, loop: Loop, tiny_model_dir: Path, expected: list[list[int]]
) -> None:
    with serve(loop, service_config(tiny_model_dir)) as (pool, address):
        (replica,) = pool.replicas
        handle = pool.launcher.handles[replica.worker_id]
        assert len(handle.followers) == 1 and handle.placement_group is not None
        assert loop.run(generate_greedy(address, SPECS)) == expected
        assert pool.stats().free_blocks == replica.info.num_blocks


def test_a_dead_rank_takes_its_group_down_and_requests_move(
    ray_local: Any, loop: Loop, tiny_model_dir: Path, expected: list[list[int]]
) -> None:
    with serve(loop, service_config(tiny_model_dir)) as (pool, address):
        (replica,) = pool.replicas
        first = pool.launcher.handles[replica.worker_id]
        failures, moves = (
            _counter("cairn_scheduler_worker_failures_total"),
            _counter("cairn_scheduler_requests_moved_total"),
        )
        responses = 0

        def kill_rank_1_when_busy() -> None:
            nonlocal responses
            responses += 1
            if responses == 15:
                ray_local.kill(first.followers[0])

        assert loop.run(generate_greedy(address, SPECS, kill_rank_1_when_busy)) == expected
        assert responses >= 15
        (replacement,) = [r for r in pool.replicas if r.health is not WorkerHealth.DEAD]
        assert replacement.worker_id != replica.worker_id
        assert replica.worker_id not in pool.launcher.handles
        assert pool.stats().finished_requests == len(SPECS)
        assert _counter("cairn_scheduler_worker_failures_total") == failures + 1
        assert _counter("cairn_scheduler_requests_moved_total") > moves
