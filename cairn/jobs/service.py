"""What every job service (trainer, quantizer) serves the same way: the job RPCs other than
SubmitJob, the manager built from the service's config, and its lifecycle inside `run_service`.

A service's servicer inherits `JobServicer` before its generated base class, names how its jobs
convert to protos, and adds SubmitJob (and any RPC of its own).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from google.protobuf.message import Message

from cairn.common.errors import InvalidArgument
from cairn.common.server import GrpcService
from cairn.v1 import common_pb2

from .config import JobServiceConfig, build_runners
from .convert import event_to_proto
from .manager import JobManager
from .records import Job
from .states import JobState
from .store import JobStore
from .watch import follow


class JobServicer:
    # The service's own job message from a job record, and its ListJobs response message.
    job_to_proto: ClassVar[Callable[[Job], Message]]
    list_response: ClassVar[type[Message]]

    def __init__(self, manager: JobManager) -> None:
        self._manager = manager

    def _to_proto(self, job: Job) -> Message:
        return type(self).job_to_proto(job)

    async def GetJob(self, request: common_pb2.JobId, context: Any) -> Message:
        return self._to_proto(await asyncio.to_thread(self._manager.get, request.job_id))

    async def ListJobs(self, request: common_pb2.ListJobsRequest, context: Any) -> Message:
        states = [_state(s) for s in request.states if s]
        jobs, token = await asyncio.to_thread(
            self._manager.list, states, request.page_size, request.page_token
        )
        return self.list_response(jobs=[self._to_proto(j) for j in jobs], next_page_token=token)

    async def WatchJob(
        self, request: common_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[common_pb2.JobEvent]:
        async for job, line in follow(self._manager, request.job_id, include_logs=request.include_logs):
            yield event_to_proto(job, line)

    async def CancelJob(self, request: common_pb2.JobId, context: Any) -> Message:
        return self._to_proto(await asyncio.to_thread(self._manager.cancel, request.job_id))


def _state(value: int) -> JobState:
    try:
        return JobState(value)
    except ValueError:
        raise InvalidArgument(f"states: {value} is not a JobState") from None


def open_manager(
    config: JobServiceConfig,
    *,
    kind: str,
    entry: str,
    id_prefix: str,
    num_workers: Callable[[dict[str, Any]], int] | None = None,
) -> JobManager:
    """The job manager of a service: its store, runners and limits from `config`."""
    jobs = config.jobs
    return JobManager(
        JobStore(config.database()),
        kind=kind,
        entry=entry,
        runners=build_runners(jobs, config.work() / "logs", work_dir=config.work()),
        default_runner=jobs.runner,
        settings=config.job_settings(),
        id_prefix=id_prefix,
        max_concurrent=jobs.max_concurrent,
        max_attempts=jobs.max_attempts,
        poll_interval_s=jobs.poll_interval_s,
        liveness_interval_s=jobs.liveness_interval_s,
        **({"num_workers": num_workers} if num_workers is not None else {}),
    )


@asynccontextmanager
async def job_service(
    open_: Callable[[], JobManager],
    name: str,
    servicer: Callable[[JobManager], object],
    add_to_server: Callable[[Any, Any], None],
) -> AsyncIterator[list[GrpcService]]:
    """A job service for `cairn.common.server.run_service`: starts the manager's loop, and on exit
    stops it and closes the store. Running jobs are left running: the next start reattaches."""
    manager = await asyncio.to_thread(open_)
    await asyncio.to_thread(manager.start)
    try:
        yield [GrpcService(name, servicer(manager), add_to_server)]
    finally:
        await asyncio.to_thread(manager.stop)
        manager.store.close()
