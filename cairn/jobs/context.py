"""What a job's work sees while it runs: its spec, where it resumes from, and how it reports.

Only rank 0 writes progress, checkpoints and log lines; every rank may fail
the job. A write the store refuses means the attempt is no longer the job's
current one (cancelled, or presumed dead and replaced): `JobLost` is raised
and the process should stop without touching anything else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .records import Checkpoint, Job, Progress
from .states import JobState
from .store import JobStore

_FLUSH_LINES = 50
_FLUSH_INTERVAL_S = 1.0


class JobLost(Exception):
    """This attempt no longer owns its job."""


class JobContext:
    def __init__(
        self,
        store: JobStore,
        job: Job,
        attempt: int,
        settings: dict[str, Any],
        *,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
    ) -> None:
        self.store = store
        self.job = job
        self.attempt = attempt
        self.settings = settings
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self._log_lock = threading.Lock()
        self._pending_logs: list[str] = []
        self._last_flush = time.monotonic()

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def spec(self) -> dict[str, Any]:
        return self.job.spec

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def resume_from(self) -> Checkpoint | None:
        """The newest checkpoint recorded by an earlier attempt, if any."""
        return self.job.checkpoint

    @property
    def work_dir(self) -> Path:
        """This job's directory under the service's work dir (shared by all its attempts)."""
        return Path(self.settings.get("work_dir", ".")) / self.job.id

    def report(self, progress: Progress) -> None:
        if not self.is_main:
            return
        self.flush_logs()
        if not self.store.report(self.job.id, self.attempt, progress):
            raise JobLost(f"job {self.job.id} attempt {self.attempt} was cancelled or replaced")

    def record_checkpoint(self, step: int, path: str | Path) -> None:
        if not self.is_main:
            return
        if not self.store.record_checkpoint(self.job.id, self.attempt, step, str(path)):
            raise JobLost(f"job {self.job.id} attempt {self.attempt} was cancelled or replaced")

    def fail(self, error: str) -> None:
        self.flush_logs()
        self.store.finish(self.job.id, self.attempt, JobState.FAILED, error=error)

    def log(self, line: str) -> None:
        if not self.is_main:
            return
        with self._log_lock:
            self._pending_logs.append(line)
            due = (
                len(self._pending_logs) >= _FLUSH_LINES
                or time.monotonic() - self._last_flush >= _FLUSH_INTERVAL_S
            )
        if due:
            self.flush_logs()

    def flush_logs(self) -> None:
        with self._log_lock:
            lines, self._pending_logs = self._pending_logs, []
            self._last_flush = time.monotonic()
        self.store.append_logs(self.job.id, self.attempt, lines)

    @contextmanager
    def capture_logs(self, logger: logging.Logger) -> Iterator[None]:
        """Forward `logger`'s INFO-and-above records to the job's log while the block runs."""
        handler = _ContextHandler(self)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            self.flush_logs()


class _ContextHandler(logging.Handler):
    def __init__(self, context: JobContext) -> None:
        super().__init__(logging.INFO)
        self.context = context

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.context.log(self.format(record))
        except Exception:
            self.handleError(record)
