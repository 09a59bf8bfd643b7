"""The manager with the local runner: real child processes, steered through marker files."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from jobs_harness import ManagerFactory, wait_for, wait_state

from cairn.common.errors import FailedPrecondition
from cairn.jobs.records import Job, RunnerKind
from cairn.jobs.runners.local import LocalRunner
from cairn.jobs.states import JobState
from cairn.jobs.store import JobStore
from cairn.jobs.watch import follow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; it is dead for our purposes.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_job_runs_to_success_with_progress_result_and_logs(
    store: JobStore, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    manager = make_manager(store)
    job = manager.submit({"steps": 3, "dir": str(tmp_path)}, labels={"team": "a"})
    done = wait_state(store, job.id, JobState.SUCCEEDED, JobState.FAILED)
    assert done.state == JobState.SUCCEEDED, done.error
    assert (done.progress.step, done.progress.total_steps, done.progress.message) == (3, 3, "step 3")
    assert done.result is not None and done.result.metrics == {"final_loss": pytest.approx(1 / 3)}
    assert done.result.details == {"started_from": 0, "world_size": 1}
    assert done.checkpoint is not None and done.checkpoint.step == 3
    assert done.attempts == 1 and done.labels == {"team": "a"}
    lines = [line.line for line in store.logs(job.id)]
    assert lines[0] == "attempt 1 started on the local runner"
    assert "rank 0/1 starting at step 0" in lines
    wait_for(lambda: store.get(job.id).handle is None, "the finished attempt to be released")


def test_work_errors_fail_the_job_with_their_message(
    store: JobStore, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    manager = make_manager(store)
    job = manager.submit({"steps": 5, "dir": str(tmp_path), "fail_at": 2})
    failed = wait_state(store, job.id, JobState.SUCCEEDED, JobState.FAILED)
    assert (failed.state, failed.error, failed.attempts) == (JobState.FAILED, "bad input at step 2", 1)
    assert failed.progress.step == 1


def test_an_entry_that_cannot_load_fails_the_job(
    store: JobStore, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    manager = make_manager(store, entry="jobs_work_missing:run")
    job = manager.submit({"steps": 1, "dir": str(tmp_path)})
    failed = wait_state(store, job.id, JobState.SUCCEEDED, JobState.FAILED)
    assert failed.state == JobState.FAILED
    assert failed.error == "ModuleNotFoundError: No module named 'jobs_work_missing'"


def test_concurrency_limit_queues_and_cancel_of_queued_is_immediate(
    store: JobStore, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    manager = make_manager(store, max_concurrent=1)
    first = manager.submit({"steps": 2, "dir": str(tmp_path), "hold_at": 1})
    wait_for((tmp_path / "attempt1-rank0-step1").exists, "the first job to hold")
    second = manager.submit({"steps": 1, "dir": str(tmp_path / "second")})
    third = manager.submit({"steps": 1, "dir": str(tmp_path / "third")})
    (tmp_path / "second").mkdir()
    (tmp_path / "third").mkdir()
    manager.tick()
    assert store.get(second.id).state == JobState.QUEUED
    cancelled = manager.cancel(second.id)
    assert (cancelled.state, cancelled.attempts) == (JobState.CANCELLED, 0)
    (tmp_path / "release").touch()
    assert wait_state(store, first.id, JobState.SUCCEEDED).attempts == 1
    assert wait_state(store, third.id, JobState.SUCCEEDED).attempts == 1
    assert store.get(second.id).state == JobState.CANCELLED
    assert not (tmp_path / "second" / "attempt1-rank0-step1").exists()
    with pytest.raises(FailedPrecondition, match="has finished"):
        manager.cancel(first.id)


def test_cancel_running_stops_the_process_and_resume_continues_from_the_checkpoint(
    store: JobStore, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    manager = make_manager(store)
    job = manager.submit({"steps": 4, "dir": str(tmp_path), "hold_at": 2})
    wait_for((tmp_path / "attempt1-rank0-step2").exists, "step 2")
    pid = store.get(job.id).handle["pid"]  # type: ignore[index]
    cancelled = manager.cancel(job.id)
    assert cancelled.state == JobState.CANCELLED and cancelled.checkpoint.step == 2  # type: ignore[union-attr]
    assert not _alive(pid)
    assert store.get(job.id).handle is None
    assert "cancelled on request" in [line.line for line in store.logs(job.id)]

    resumed = manager.resume(job.id)
    assert resumed.state == JobState.QUEUED
    done = wait_state(store, job.id, JobState.SUCCEEDED, JobState.FAILED)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.attempts == 2 and done.result.details["started_from"] == 2  # type: ignore[union-attr]


def test_crashing_runner_is_retried_then_failed(
    store: JobStore, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    manager = make_manager(store, max_attempts=2)
    job = manager.submit({"steps": 3, "dir": str(tmp_path), "crash_at": 2})
    failed = wait_state(store, job.id, JobState.FAILED)
    assert failed.attempts == 2
    assert failed.error.startswith("gave up after 2 attempts; attempt 2 ended without finishing the job: ")
    assert "exited with status 9" in failed.error
    lines = [line.line for line in store.logs(job.id)]
    assert any(line.endswith("requeued to resume from step 1") for line in lines)
    assert "attempt 2 started on the local runner from the checkpoint at step 1" in lines


def test_killed_runner_and_restarted_service_resume_from_the_checkpoint(
    store: JobStore, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    first = make_manager(store)
    job = first.submit({"steps": 5, "dir": str(tmp_path), "hold_at": 3})
    wait_for((tmp_path / "attempt1-rank0-step3").exists, "step 3")
    pid = store.get(job.id).handle["pid"]  # type: ignore[index]
    first.stop()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid), "the child to die")
    assert store.get(job.id).state == JobState.RUNNING

    make_manager(store)
    done = wait_state(store, job.id, JobState.SUCCEEDED, JobState.FAILED)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.attempts == 2
    assert done.result.details["started_from"] == 3  # type: ignore[union-attr]
    assert not (tmp_path / "attempt2-rank0-step3").exists()
    assert (tmp_path / "attempt2-rank0-step4").exists()


def test_restarted_service_reattaches_to_a_live_runner(
    store: JobStore, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    first = make_manager(store)
    job = first.submit({"steps": 2, "dir": str(tmp_path), "hold_at": 1})
    wait_for((tmp_path / "attempt1-rank0-step1").exists, "step 1")
    first.stop()
    second = make_manager(store)
    second.tick()
    assert store.get(job.id).state == JobState.RUNNING
    (tmp_path / "release").touch()
    done = wait_state(store, job.id, JobState.SUCCEEDED, JobState.FAILED)
    assert (done.state, done.attempts) == (JobState.SUCCEEDED, 1)


def test_ranks_run_together_and_rank0_reports(
    store: JobStore, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    manager = make_manager(store, num_workers=lambda spec: spec["workers"])
    job = manager.submit({"steps": 2, "dir": str(tmp_path), "workers": 2})
    done = wait_state(store, job.id, JobState.SUCCEEDED, JobState.FAILED)
    assert done.state == JobState.SUCCEEDED, done.error
    assert done.result.details["world_size"] == 2  # type: ignore[union-attr]
    expected = {f"attempt1-rank{r}-step{s}" for r in (0, 1) for s in (1, 2)}
    # Rank 0 finishes the job; rank 1 may still be writing its last marker then.
    wait_for(lambda: {p.name for p in tmp_path.glob("attempt1-rank*")} == expected, "both ranks' steps")


def test_unconfigured_runner_is_refused_at_submit(store: JobStore, make_manager: ManagerFactory) -> None:
    manager = make_manager(store)
    with pytest.raises(FailedPrecondition, match="runner 'ray' is not configured"):
        manager.submit({}, RunnerKind.RAY)


def test_watch_sends_current_status_first_then_changes_and_logs(
    store: JobStore, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    manager = make_manager(store)
    job = manager.submit({"steps": 3, "dir": str(tmp_path), "hold_at": 1})
    wait_for((tmp_path / "attempt1-rank0-step1").exists, "step 1")

    async def watch() -> list[tuple[Job, str]]:
        events = []
        async for job_now, line in follow(manager, job.id, include_logs=True):
            events.append((job_now, line))
            if len(events) == 1:
                (tmp_path / "release").touch()
        return events

    events = asyncio.run(asyncio.wait_for(watch(), 60))
    first, _ = events[0]
    assert first.state == JobState.RUNNING and first.progress.step == 1
    revisions = [e.revision for e, line in events if not line]
    assert revisions == sorted(set(revisions))
    assert events[-1][0].state == JobState.SUCCEEDED
    # Changes between two polls of the store arrive as one; log lines all arrive, before the end.
    assert [e.progress.step for e, line in events if not line][-1] == 3
    assert [line for _, line in events if line][-2:] == ["finished step 2", "finished step 3"]

    async def watch_finished() -> list[tuple[Job, str]]:
        return [event async for event in follow(manager, job.id)]

    (only,) = asyncio.run(watch_finished())
    assert only[0].state == JobState.SUCCEEDED


def test_local_runner_reports_exit_and_output(tmp_path: Path, store: JobStore) -> None:
    from cairn.jobs.runners.base import Launch

    runner = LocalRunner(tmp_path / "logs")
    launch = Launch(job_id="t-x", kind="test", attempt=1, entry="jobs_work:stepper", db_url=store.url)
    handle = runner.start(launch)
    status = wait_for(lambda: (s := runner.status(handle)) and not s.alive and s, "the child to exit")
    assert status.exit_code == 1  # the job does not exist
    assert "NotFound" in status.detail and "exited with status 1" in status.detail
    assert not runner.status({**handle, "started": "0"}).alive
    assert runner.status({**handle, "host": "elsewhere"}).alive
    runner.release(handle)
