"""The job service's engine: queue, dispatch under a concurrency limit, watch runners, recover.

One background thread does the periodic work: claim QUEUED jobs while fewer
than `max_concurrent` run, check that every RUNNING job's runner is still
alive, release what finished attempts hold, and publish the changes runners
wrote to the store to WatchJob subscribers. A runner that vanished without
finishing its job (crash, kill, lost node, service restart while it died)
sends the job back to QUEUED, to resume from its last checkpoint, until
`max_attempts` attempts have been spent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from cairn.common.errors import FailedPrecondition
from cairn.common.pagination import decode_token, effective_page_size, encode_token

from .events import EventBus, Subscription
from .records import Job, RunnerKind
from .runners.base import Launch, Runner, RunnerStatus
from .states import JobState
from .store import JobStore

logger = logging.getLogger("cairn.jobs")

# A RUNNING job without a runner handle this long after its start was claimed by a
# service that died before it could launch it.
HANDLE_GRACE = timedelta(seconds=60)


class JobManager:
    def __init__(
        self,
        store: JobStore,
        *,
        kind: str,
        entry: str,
        runners: Mapping[RunnerKind, Runner],
        default_runner: RunnerKind,
        settings: dict[str, Any] | None = None,
        id_prefix: str = "job",
        max_concurrent: int = 1,
        max_attempts: int = 3,
        poll_interval_s: float = 0.5,
        liveness_interval_s: float = 2.0,
        num_workers: Callable[[dict[str, Any]], int] = lambda spec: 1,
    ) -> None:
        """`entry` is the work ("module:function"); `num_workers(spec)` its data-parallel ranks."""
        if default_runner not in runners:
            raise ValueError(f"default runner {default_runner.value!r} is not among the configured runners")
        self.store = store
        self.kind = kind
        self.entry = entry
        self.runners = dict(runners)
        self.default_runner = default_runner
        self.settings = dict(settings or {})
        self.id_prefix = id_prefix
        self.max_concurrent = max_concurrent
        self.max_attempts = max_attempts
        self.poll_interval_s = poll_interval_s
        self.liveness_interval_s = liveness_interval_s
        self.num_workers = num_workers
        self.bus = EventBus()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[str, int] = {}
        self._last_liveness = 0.0

    # ---- lifecycle

    def start(self) -> None:
        """Reattach to or requeue what a previous service left RUNNING, then start the loop."""
        self._check_runners(recovering=True)
        self._thread = threading.Thread(target=self._loop, name=f"{self.kind}-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop; running attempts go on and the next start reattaches to them."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        for runner in self.runners.values():
            runner.close()

    # ---- API

    def submit(
        self, spec: dict[str, Any], runner: RunnerKind | None = None, labels: dict[str, str] | None = None
    ) -> Job:
        kind = runner or self.default_runner
        if kind not in self.runners:
            configured = ", ".join(sorted(r.value for r in self.runners))
            raise FailedPrecondition(
                f"runner {kind.value!r} is not configured on this {self.kind} service; "
                f"configured: {configured}"
            )
        job = self.store.create(self.kind, spec, kind, labels, id_prefix=self.id_prefix)
        self._changed(job)
        return job

    def get(self, job_id: str) -> Job:
        return self.store.get(job_id, self.kind)

    def list(self, states: Sequence[JobState], page_size: int, page_token: str) -> tuple[list[Job], str]:
        query = {"kind": self.kind, "states": sorted(int(s) for s in states)}
        limit = effective_page_size(page_size)
        jobs, after = self.store.list(self.kind, states, limit, decode_token(page_token, query))
        return jobs, (encode_token(query, after) if after is not None else "")

    def cancel(self, job_id: str) -> Job:
        """QUEUED: cancelled at once. RUNNING: marked CANCELLED, then its runner is stopped."""
        before, after = self.store.cancel(job_id, self.kind)
        self._changed(after)
        if before.state == JobState.RUNNING and before.handle is not None:
            self.runners[before.runner].cancel(before.handle)
            self.store.clear_handle(job_id)
        self.store.append_logs(job_id, before.attempts, ["cancelled on request"])
        return self.get(job_id)

    def resume(self, job_id: str) -> Job:
        job = self.store.resume(job_id, self.kind)
        self.store.append_logs(
            job_id, job.attempts, ["requeued on request; resumes from its last checkpoint"]
        )
        self._changed(job)
        return job

    def subscribe(
        self, job_id: str, loop: asyncio.AbstractEventLoop, include_logs: bool = False
    ) -> tuple[Subscription, Job]:
        """Follow a job on `loop`; returns the subscription and the job as of then (blocking: a thread)."""
        self.get(job_id)
        cursor = self.store.last_log_id(job_id) if include_logs else None
        subscription = self.bus.subscribe(job_id, loop, cursor)
        self._wake.set()
        return subscription, self.get(job_id)

    def tick(self) -> None:
        """One round of the loop's work; the loop calls it, tests may too."""
        self._dispatch()
        if time.monotonic() - self._last_liveness >= self.liveness_interval_s:
            self._check_runners(recovering=False)
            self._release_finished()
        self._publish_changes()

    # ---- the loop

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("%s job loop failed; retrying", self.kind)
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    def _changed(self, job: Job) -> None:
        self.bus.publish(job)
        self._wake.set()

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            job = self.store.claim_next(self.kind, self.max_concurrent)
            if job is None:
                return
            self._launch(job)

    def _launch(self, job: Job) -> None:
        runner = self.runners.get(job.runner)
        if runner is None:
            self.store.finish(
                job.id,
                job.attempts,
                JobState.FAILED,
                error=f"runner {job.runner.value!r} is no longer configured on this service",
            )
            return
        launch = Launch(
            job_id=job.id,
            kind=self.kind,
            attempt=job.attempts,
            entry=self.entry,
            db_url=self.store.url,
            settings=self.settings,
            num_workers=self.num_workers(job.spec),
        )
        try:
            handle = runner.start(launch)
        except Exception as e:
            logger.exception("could not start job %s", job.id)
            self.store.finish(
                job.id,
                job.attempts,
                JobState.FAILED,
                error=f"the {runner.kind.value} runner could not start: {e}",
            )
            return
        if not self.store.set_handle(job.id, job.attempts, handle):
            # Cancelled between the claim and the start.
            runner.cancel(handle)
            return
        where = f" from the checkpoint at step {job.checkpoint.step}" if job.checkpoint else ""
        self.store.append_logs(
            job.id, job.attempts, [f"attempt {job.attempts} started on the {runner.kind.value} runner{where}"]
        )
        logger.info("started job %s attempt %d on %s", job.id, job.attempts, runner.kind.value)

    def _check_runners(self, *, recovering: bool) -> None:
        self._last_liveness = time.monotonic()
        for job in self.store.with_state(self.kind, JobState.RUNNING):
            status = self._status(job, recovering)
            if status.alive:
                continue
            current = self.store.get(job.id)
            if current.state != JobState.RUNNING or current.attempts != job.attempts:
                continue  # it finished (or was cancelled) while we looked
            self._runner_lost(current, status)

    def _status(self, job: Job, recovering: bool) -> RunnerStatus:
        if job.handle is None:
            started = job.started_at or datetime.now(timezone.utc)
            if recovering or datetime.now(timezone.utc) - started > HANDLE_GRACE:
                return RunnerStatus(alive=False, detail="the service stopped before the runner started")
            return RunnerStatus(alive=True)
        runner = self.runners.get(job.runner)
        if runner is None:
            return RunnerStatus(alive=False, detail=f"runner {job.runner.value!r} is no longer configured")
        try:
            return runner.status(job.handle)
        except Exception as e:
            # Not knowing (API server or Ray head unreachable) is not the same as dead.
            logger.warning("cannot check job %s on %s: %s", job.id, job.runner.value, e)
            return RunnerStatus(alive=True)

    def _runner_lost(self, job: Job, status: RunnerStatus) -> None:
        if job.handle is not None and job.runner in self.runners:
            self.runners[job.runner].release(job.handle)
        why = f"attempt {job.attempts} ended without finishing the job: {status.detail or 'no detail'}"
        if job.attempts < self.max_attempts:
            if self.store.requeue(job.id, job.attempts, why):
                where = f"step {job.checkpoint.step}" if job.checkpoint else "the start"
                self.store.append_logs(job.id, job.attempts, [f"{why}; requeued to resume from {where}"])
                logger.warning("job %s: %s; requeued", job.id, why)
        else:
            error = f"gave up after {job.attempts} attempts; {why}"
            if self.store.finish(job.id, job.attempts, JobState.FAILED, error=error):
                logger.error("job %s: %s", job.id, error)
        self._wake.set()

    def _release_finished(self) -> None:
        for job in self.store.unreleased(self.kind):
            runner = self.runners.get(job.runner)
            if runner is not None and job.handle is not None:
                try:
                    runner.release(job.handle)
                except Exception as e:
                    logger.warning("cannot release job %s on %s: %s", job.id, job.runner.value, e)
                    continue
            self.store.clear_handle(job.id)

    def _publish_changes(self) -> None:
        watched = self.bus.watched()
        for job_id in list(self._seen):
            if job_id not in watched:
                del self._seen[job_id]
        if not watched:
            return
        # Revisions first, then logs: every line written before a change we publish is
        # read here, so a watcher sees a job's last lines before its final state.
        revisions = self.store.revisions(watched)
        for job_id, cursor in watched.items():
            if cursor is not None:
                lines = self.store.logs(job_id, cursor)
                if lines:
                    self.bus.publish_logs(job_id, lines)
        for job_id, revision in revisions.items():
            if revision > self._seen.get(job_id, 0):
                self._seen[job_id] = revision
                self.bus.publish(self.store.get(job_id))
