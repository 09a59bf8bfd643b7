"""Helpers the job tests share (a module of its own: conftest modules of two suites share a name)."""

from __future__ import annotations

import time
from collections.abc import Callable

from cairn.jobs.manager import JobManager
from cairn.jobs.records import Job
from cairn.jobs.store import JobStore

ManagerFactory = Callable[..., JobManager]


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0) -> object:
    """Poll until `condition()` is truthy; for effects that child processes cause."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def wait_state(store: JobStore, job_id: str, *states: object, timeout: float = 60.0) -> Job:
    def reached() -> Job | None:
        job = store.get(job_id)
        return job if job.state in states else None

    return wait_for(reached, f"job {job_id} to reach {states}", timeout)  # type: ignore[return-value]
