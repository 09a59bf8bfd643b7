"""The Ray runner on a local Ray instance (CPU only): ranks as detached actors in a placement group."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_harness import ManagerFactory, wait_for, wait_state

from cairn.jobs.records import RunnerKind
from cairn.jobs.runners.raycluster import RayRunner
from cairn.jobs.states import JobState
from cairn.jobs.store import JobStore

NAMESPACE = "cairn-test"


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[object]:
    import ray

    ray.init(num_cpus=4, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def runner(ray_instance: object) -> RayRunner:
    return RayRunner(namespace=NAMESPACE, cpus_per_worker=1, gpus_per_worker=0, cancel_grace_s=5)


def _gone(ray: object, name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)  # type: ignore[attr-defined]
    except ValueError:
        return True
    return False


def test_two_ranks_run_on_ray_and_are_released(
    store: JobStore, make_manager: ManagerFactory, runner: RayRunner, ray_instance: object, tmp_path: Path
) -> None:
    manager = make_manager(store, runners={RunnerKind.RAY: runner}, num_workers=lambda spec: 2)
    job = manager.submit({"steps": 2, "dir": str(tmp_path)})
    running = wait_for(lambda: (j := store.get(job.id)).handle and j, "the actors to start")
    actors = running.handle["actors"]  # type: ignore[index]
    assert len(actors) == 2
    done = wait_state(store, job.id, JobState.SUCCEEDED, JobState.FAILED, timeout=120)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.runner == RunnerKind.RAY and done.result.details["world_size"] == 2  # type: ignore[union-attr]
    wait_for(lambda: all(_gone(ray_instance, name) for name in actors), "the actors to be released")


def test_cancel_stops_the_ranks_and_a_lost_actor_resumes_elsewhere(
    store: JobStore, make_manager: ManagerFactory, runner: RayRunner, ray_instance: object, tmp_path: Path
) -> None:
    manager = make_manager(store, runners={RunnerKind.RAY: runner})
    cancelled = manager.submit({"steps": 3, "dir": str(tmp_path / "a"), "hold_at": 1})
    (tmp_path / "a").mkdir()
    wait_for((tmp_path / "a" / "attempt1-rank0-step1").exists, "step 1 on Ray", timeout=120)
    actors = store.get(cancelled.id).handle["actors"]  # type: ignore[index]
    assert manager.cancel(cancelled.id).state == JobState.CANCELLED
    assert all(_gone(ray_instance, name) for name in actors)

    lost = manager.submit({"steps": 3, "dir": str(tmp_path / "b"), "hold_at": 2})
    (tmp_path / "b").mkdir()
    wait_for((tmp_path / "b" / "attempt1-rank0-step2").exists, "step 2 on Ray", timeout=120)
    (actor_name,) = store.get(lost.id).handle["actors"]  # type: ignore[index]
    ray_instance.kill(ray_instance.get_actor(actor_name, namespace=NAMESPACE))  # type: ignore[attr-defined]
    done = wait_state(store, lost.id, JobState.SUCCEEDED, JobState.FAILED, timeout=120)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.attempts == 2 and done.result.details["started_from"] == 2  # type: ignore[union-attr]
