"""WatchJob for any job service: the current status first, then every change until the job ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .manager import JobManager
from .records import Job, LogLine


async def follow(
    manager: JobManager, job_id: str, *, include_logs: bool = False
) -> AsyncIterator[tuple[Job, str]]:
    """Yield (job, log line or "") as the job changes; ends after its terminal state.

    Each change is yielded once, in order (revisions only grow); log lines come
    with the status current when they arrived.
    """
    loop = asyncio.get_running_loop()
    subscription, job = await asyncio.to_thread(manager.subscribe, job_id, loop, include_logs)
    try:
        yield job, ""
        while not job.state.terminal:
            event = await subscription.get()
            if isinstance(event, LogLine):
                yield job, event.line
            elif event.revision > job.revision:
                job = event
                yield job, ""
    finally:
        subscription.close()
