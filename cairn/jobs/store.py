"""Job persistence (SQLite by default, PostgreSQL by URL): one transaction per method.

State changes go through `states.check_transition`. Writes a runner makes
(progress, checkpoints, logs, the final state) name the attempt they belong
to and only land while the job is RUNNING that very attempt, so a runner that
was cancelled, or presumed dead and replaced, can never overwrite its
successor's state.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

import sqlalchemy as sa

from cairn.common.db import WRITE_OPTION, create_engine
from cairn.common.errors import NotFound, Unavailable

from .records import Checkpoint, Job, JobResult, LogLine, Progress, RunnerKind
from .schema import job_logs, jobs, metadata
from .states import TERMINAL, JobState, check_transition

T = TypeVar("T")

_WRITE_ATTEMPTS = 5
MAX_LOG_LINE = 4000


def _now() -> datetime:
    return datetime.now(timezone.utc)


class JobStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = create_engine(url, metadata)
        self._postgres = self._engine.dialect.name == "postgresql"

    def close(self) -> None:
        self._engine.dispose()

    # ---- service side

    def create(
        self,
        kind: str,
        spec: dict[str, Any],
        runner: RunnerKind,
        labels: dict[str, str] | None = None,
        id_prefix: str = "job",
    ) -> Job:
        job_id = f"{id_prefix}-{uuid.uuid4().hex[:12]}"
        values = {
            "id": job_id,
            "kind": kind,
            "spec": spec,
            "labels": dict(labels or {}),
            "state": int(JobState.QUEUED),
            "runner": runner.value,
            "progress": {},
            "error": "",
            "attempts": 0,
            "created_at": _now(),
            "revision": 1,
        }

        def run(conn: sa.Connection) -> Job:
            conn.execute(jobs.insert().values(**values))
            return _job(self._row(conn, job_id))

        return self._write(run)

    def get(self, job_id: str, kind: str | None = None) -> Job:
        return self._read(lambda conn: _job(self._row(conn, job_id, kind)))

    def list(
        self, kind: str, states: Sequence[JobState], limit: int, after_seq: int | None
    ) -> tuple[list[Job], int | None]:
        """Newest first; returns the page and the seq to continue after (None on the last page)."""

        def run(conn: sa.Connection) -> tuple[list[Job], int | None]:
            query = sa.select(jobs).where(jobs.c.kind == kind).order_by(jobs.c.seq.desc()).limit(limit + 1)
            if states:
                query = query.where(jobs.c.state.in_([int(s) for s in states]))
            if after_seq is not None:
                query = query.where(jobs.c.seq < after_seq)
            rows = conn.execute(query).all()
            page = [_job(r) for r in rows[:limit]]
            return page, (page[-1].seq if len(rows) > limit else None)

        return self._read(run)

    def with_state(self, kind: str, state: JobState) -> list[Job]:
        """Every job of `kind` in `state`, oldest first."""
        query = sa.select(jobs).where(jobs.c.kind == kind, jobs.c.state == int(state)).order_by(jobs.c.seq)
        return self._read(lambda conn: [_job(r) for r in conn.execute(query)])

    def unreleased(self, kind: str) -> list[Job]:
        """Finished jobs whose runner resources (Ray actors, ...) have not been released yet."""
        query = sa.select(jobs).where(
            jobs.c.kind == kind,
            jobs.c.state.in_([int(s) for s in TERMINAL]),
            jobs.c.handle.is_not(None),
        )
        return self._read(lambda conn: [_job(r) for r in conn.execute(query)])

    def revisions(self, job_ids: Iterable[str]) -> dict[str, int]:
        ids = list(job_ids)
        if not ids:
            return {}
        query = sa.select(jobs.c.id, jobs.c.revision).where(jobs.c.id.in_(ids))
        return self._read(lambda conn: {r.id: int(r.revision) for r in conn.execute(query)})

    def claim_next(self, kind: str, max_running: int) -> Job | None:
        """Move the oldest QUEUED job to RUNNING as a new attempt, unless `max_running` already run."""

        def run(conn: sa.Connection) -> Job | None:
            running = conn.execute(
                sa.select(sa.func.count())
                .select_from(jobs)
                .where(jobs.c.kind == kind, jobs.c.state == int(JobState.RUNNING))
            ).scalar_one()
            if running >= max_running:
                return None
            query = (
                sa.select(jobs)
                .where(jobs.c.kind == kind, jobs.c.state == int(JobState.QUEUED))
                .order_by(jobs.c.seq)
                .limit(1)
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            row = conn.execute(query).one_or_none()
            if row is None:
                return None
            check_transition(row.id, JobState(row.state), JobState.RUNNING)
            self._update(
                conn,
                row.id,
                state=int(JobState.RUNNING),
                attempts=row.attempts + 1,
                started_at=_now(),
                finished_at=None,
                error="",
                handle=None,
            )
            return _job(self._row(conn, row.id))

        return self._write(run)

    def set_handle(self, job_id: str, attempt: int, handle: dict[str, Any]) -> bool:
        return self._guarded(job_id, attempt, handle=handle)

    def clear_handle(self, job_id: str) -> None:
        self._write(lambda conn: self._update(conn, job_id, handle=None))

    def cancel(self, job_id: str, kind: str) -> tuple[Job, Job]:
        """QUEUED or RUNNING -> CANCELLED; returns the job before and after."""

        def run(conn: sa.Connection) -> tuple[Job, Job]:
            before = _job(self._row(conn, job_id, kind, lock=True))
            check_transition(job_id, before.state, JobState.CANCELLED)
            self._update(conn, job_id, state=int(JobState.CANCELLED), finished_at=_now())
            return before, _job(self._row(conn, job_id))

        return self._write(run)

    def resume(self, job_id: str, kind: str) -> Job:
        """FAILED or CANCELLED -> QUEUED; the next attempt starts from the last checkpoint."""

        def run(conn: sa.Connection) -> Job:
            before = _job(self._row(conn, job_id, kind, lock=True))
            check_transition(job_id, before.state, JobState.QUEUED)
            self._update(conn, job_id, state=int(JobState.QUEUED), finished_at=None, error="")
            return _job(self._row(conn, job_id))

        return self._write(run)

    def requeue(self, job_id: str, attempt: int, reason: str) -> bool:
        """RUNNING -> QUEUED after the runner of `attempt` was lost; `reason` shows until it restarts."""
        return self._guarded(job_id, attempt, state=int(JobState.QUEUED), error=reason, handle=None)

    # ---- runner side (guarded by attempt)

    def report(self, job_id: str, attempt: int, progress: Progress) -> bool:
        return self._guarded(job_id, attempt, progress=progress.to_dict())

    def record_checkpoint(self, job_id: str, attempt: int, step: int, path: str) -> bool:
        return self._guarded(job_id, attempt, checkpoint_step=step, checkpoint_path=path)

    def finish(
        self,
        job_id: str,
        attempt: int,
        state: JobState,
        *,
        error: str = "",
        result: JobResult | None = None,
    ) -> bool:
        """RUNNING -> SUCCEEDED/FAILED/CANCELLED for `attempt`; False if the job moved on meanwhile."""
        check_transition(job_id, JobState.RUNNING, state)
        values: dict[str, Any] = {"state": int(state), "error": error, "finished_at": _now()}
        if result is not None:
            values["result"] = result.to_dict()
        return self._guarded(job_id, attempt, **values)

    def append_logs(self, job_id: str, attempt: int, lines: Sequence[str]) -> None:
        if not lines:
            return
        rows = [{"job_id": job_id, "attempt": attempt, "line": line[:MAX_LOG_LINE]} for line in lines]
        self._write(lambda conn: conn.execute(job_logs.insert(), rows))

    def logs(self, job_id: str, after_id: int = 0, limit: int = 1000) -> list[LogLine]:
        query = (
            sa.select(job_logs)
            .where(job_logs.c.job_id == job_id, job_logs.c.id > after_id)
            .order_by(job_logs.c.id)
            .limit(limit)
        )
        return self._read(
            lambda conn: [LogLine(r.id, r.job_id, r.attempt, r.line) for r in conn.execute(query)]
        )

    def last_log_id(self, job_id: str) -> int:
        query = sa.select(sa.func.max(job_logs.c.id)).where(job_logs.c.job_id == job_id)
        return self._read(lambda conn: int(conn.execute(query).scalar_one() or 0))

    # ---- helpers

    def _row(
        self, conn: sa.Connection, job_id: str, kind: str | None = None, *, lock: bool = False
    ) -> sa.Row:
        query = sa.select(jobs).where(jobs.c.id == job_id)
        if lock and self._postgres:
            query = query.with_for_update()
        row = conn.execute(query).one_or_none()
        if row is None or (kind is not None and row.kind != kind):
            raise NotFound(f"job {job_id!r} not found")
        return row

    def _update(self, conn: sa.Connection, job_id: str, **values: Any) -> None:
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(revision=jobs.c.revision + 1, **values))

    def _guarded(self, job_id: str, attempt: int, **values: Any) -> bool:
        statement = (
            jobs.update()
            .where(
                jobs.c.id == job_id,
                jobs.c.state == int(JobState.RUNNING),
                jobs.c.attempts == attempt,
            )
            .values(revision=jobs.c.revision + 1, **values)
        )
        return self._write(lambda conn: conn.execute(statement).rowcount == 1)

    def _read(self, fn: Callable[[sa.Connection], T]) -> T:
        try:
            with self._connection(write=False) as conn:
                return fn(conn)
        except sa.exc.OperationalError as e:
            raise Unavailable(f"job database unreachable: {e.orig}; retry") from e

    def _write(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run `fn` in a write transaction, retrying what the database reports as transient (busy, lost)."""
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._connection(write=True) as conn:
                    return fn(conn)
            except sa.exc.OperationalError as e:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise Unavailable(f"job database busy or unreachable: {e.orig}; retry") from e
            time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    @contextmanager
    def _connection(self, *, write: bool) -> Iterator[sa.Connection]:
        with self._engine.connect() as conn:
            if write:
                conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn


def _job(row: sa.Row) -> Job:
    checkpoint = None
    if row.checkpoint_step is not None and row.checkpoint_path:
        checkpoint = Checkpoint(int(row.checkpoint_step), row.checkpoint_path)
    return Job(
        id=row.id,
        kind=row.kind,
        spec=dict(row.spec),
        state=JobState(row.state),
        runner=RunnerKind(row.runner),
        progress=Progress.from_dict(dict(row.progress)),
        error=row.error,
        attempts=int(row.attempts),
        checkpoint=checkpoint,
        result=JobResult.from_dict(dict(row.result)) if row.result is not None else None,
        labels=dict(row.labels),
        handle=dict(row.handle) if row.handle is not None else None,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        revision=int(row.revision),
        seq=int(row.seq),
    )
