"""The store and the state machine, called directly: transitions, attempt guards, paging, logs.

Store tests run on SQLite and on PostgreSQL (`any_store`).
"""

from __future__ import annotations

import itertools

import pytest

from cairn.common.errors import FailedPrecondition, InvalidArgument, NotFound
from cairn.jobs.records import JobResult, Progress, RunnerKind
from cairn.jobs.states import JobState, check_transition
from cairn.jobs.store import JobStore

LEGAL = {
    (JobState.QUEUED, JobState.RUNNING),
    (JobState.QUEUED, JobState.CANCELLED),
    (JobState.RUNNING, JobState.SUCCEEDED),
    (JobState.RUNNING, JobState.FAILED),
    (JobState.RUNNING, JobState.CANCELLED),
    (JobState.RUNNING, JobState.QUEUED),
    (JobState.FAILED, JobState.QUEUED),
    (JobState.CANCELLED, JobState.QUEUED),
}


@pytest.fixture
def store(any_store: JobStore) -> JobStore:
    return any_store


@pytest.mark.parametrize(("current", "target"), list(itertools.product(JobState, JobState)))
def test_transition_table(current: JobState, target: JobState) -> None:
    if (current, target) in LEGAL:
        check_transition("j", current, target)
    else:
        with pytest.raises(FailedPrecondition, match=f"j is {current.name}; it cannot become {target.name}"):
            check_transition("j", current, target)


def test_create_get_and_kinds_are_separate(store: JobStore) -> None:
    job = store.create("test", {"a": 1}, RunnerKind.LOCAL, {"team": "x"}, id_prefix="t")
    assert job.id.startswith("t-")
    assert (job.state, job.attempts, job.spec, job.labels) == (JobState.QUEUED, 0, {"a": 1}, {"team": "x"})
    assert store.get(job.id, "test") == job
    with pytest.raises(NotFound):
        store.get(job.id, "other")
    with pytest.raises(NotFound):
        store.get("t-missing")


def test_claim_respects_limit_and_order(store: JobStore) -> None:
    first = store.create("test", {}, RunnerKind.LOCAL)
    second = store.create("test", {}, RunnerKind.LOCAL)
    store.create("other", {}, RunnerKind.LOCAL)
    claimed = store.claim_next("test", max_running=1)
    assert claimed is not None and claimed.id == first.id
    assert (claimed.state, claimed.attempts) == (JobState.RUNNING, 1)
    assert claimed.started_at is not None
    assert store.claim_next("test", max_running=1) is None
    assert store.claim_next("test", max_running=2).id == second.id  # type: ignore[union-attr]
    assert store.claim_next("test", max_running=5) is None


def test_runner_writes_need_the_current_attempt(store: JobStore) -> None:
    job = store.create("test", {}, RunnerKind.LOCAL)
    assert not store.report(job.id, 0, Progress(step=1))  # not running yet
    store.claim_next("test", 1)
    assert store.report(job.id, 1, Progress(step=3, total_steps=9, loss=0.5, message="m"))
    assert not store.report(job.id, 2, Progress(step=4))
    assert store.record_checkpoint(job.id, 1, 3, "/ckpt/3")
    assert store.requeue(job.id, 1, "lost")
    assert not store.record_checkpoint(job.id, 1, 4, "/ckpt/4")  # the lost attempt writes nothing now
    again = store.claim_next("test", 1)
    assert again is not None and again.attempts == 2 and again.error == ""
    assert again.checkpoint is not None and (again.checkpoint.step, again.checkpoint.path) == (3, "/ckpt/3")
    assert again.progress == Progress(step=3, total_steps=9, loss=0.5, message="m")
    assert not store.finish(job.id, 1, JobState.SUCCEEDED)
    result = JobResult(model="m", version=2, metrics={"loss": 0.1}, details={"x": [1]})
    assert store.finish(job.id, 2, JobState.SUCCEEDED, result=result)
    done = store.get(job.id)
    assert (done.state, done.result, done.finished_at is not None) == (JobState.SUCCEEDED, result, True)
    with pytest.raises(FailedPrecondition, match="has finished"):
        store.cancel(job.id, "test")
    with pytest.raises(FailedPrecondition):
        store.resume(job.id, "test")


def test_cancel_and_resume(store: JobStore) -> None:
    queued = store.create("test", {}, RunnerKind.LOCAL)
    before, after = store.cancel(queued.id, "test")
    assert (before.state, after.state, after.attempts) == (JobState.QUEUED, JobState.CANCELLED, 0)
    assert store.resume(queued.id, "test").state == JobState.QUEUED
    with pytest.raises(FailedPrecondition, match="QUEUED; it cannot become QUEUED"):
        store.resume(queued.id, "test")
    running = store.claim_next("test", 1)
    assert running is not None and store.set_handle(running.id, 1, {"pid": 1})
    before, after = store.cancel(running.id, "test")
    assert before.handle == {"pid": 1} and after.state == JobState.CANCELLED
    assert [j.id for j in store.unreleased("test")] == [running.id]
    store.clear_handle(running.id)
    assert store.unreleased("test") == []


def test_revisions_grow_with_every_change(store: JobStore) -> None:
    job = store.create("test", {}, RunnerKind.LOCAL)
    seen = [store.revisions([job.id])[job.id]]
    store.claim_next("test", 1)
    seen.append(store.revisions([job.id])[job.id])
    store.report(job.id, 1, Progress(step=1))
    seen.append(store.revisions([job.id])[job.id])
    store.finish(job.id, 1, JobState.FAILED, error="boom")
    seen.append(store.get(job.id).revision)
    assert seen == sorted(set(seen)) and len(seen) == 4
    assert store.revisions([]) == {}


def test_list_pages_newest_first_with_state_filter(store: JobStore) -> None:
    from cairn.jobs.manager import JobManager

    ids = [store.create("test", {"n": n}, RunnerKind.LOCAL).id for n in range(7)]
    store.cancel(ids[2], "test")
    manager = JobManager(store, kind="test", entry="x:y", runners={RunnerKind.LOCAL: object()},  # type: ignore[dict-item]
                         default_runner=RunnerKind.LOCAL)  # fmt: skip
    page, token = manager.list([], 3, "")
    listed = [j.id for j in page]
    while token:
        page, token = manager.list([], 3, token)
        listed += [j.id for j in page]
    assert listed == ids[::-1]
    queued, token = manager.list([JobState.QUEUED], 10, "")
    assert [j.id for j in queued] == [i for i in ids[::-1] if i != ids[2]] and token == ""
    _, token = manager.list([JobState.QUEUED], 2, "")
    with pytest.raises(InvalidArgument, match="different query"):
        manager.list([JobState.CANCELLED], 2, token)


def test_logs_are_kept_in_order_after_a_cursor(store: JobStore) -> None:
    job = store.create("test", {}, RunnerKind.LOCAL)
    store.append_logs(job.id, 1, ["a", "b"])
    cursor = store.last_log_id(job.id)
    store.append_logs(job.id, 2, ["c", "x" * 10_000])
    lines = store.logs(job.id, cursor)
    assert [(line.attempt, line.line[:1]) for line in lines] == [(2, "c"), (2, "x")]
    assert len(lines[1].line) == 4000
    assert [line.line for line in store.logs(job.id)][:2] == ["a", "b"]
