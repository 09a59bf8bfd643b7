"""The `cairn.v1.Trainer` gRPC servicer over the shared job machinery.

Submissions are validated in full (`plan_from_spec`) before a job exists;
everything blocking (the store) runs on a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cairn.common.errors import InvalidArgument
from cairn.common.server import GrpcService, run_service
from cairn.jobs.config import build_runners
from cairn.jobs.convert import event_to_proto, runner_from_proto
from cairn.jobs.manager import JobManager
from cairn.jobs.records import RunnerKind
from cairn.jobs.states import JobState
from cairn.jobs.store import JobStore
from cairn.jobs.watch import follow
from cairn.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

from .config import TrainerConfig
from .convert import job_to_proto, spec_from_dict, spec_to_dict
from .modeling import check_qlora_available
from .plan import Method, plan_from_spec

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
KIND = "trainer"
ENTRY = "cairn.services.trainer.work:run"


def num_workers(spec: dict[str, Any]) -> int:
    return plan_from_spec(spec_from_dict(spec)).num_workers


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, manager: JobManager) -> None:
        self._manager = manager

    async def SubmitJob(self, request: trainer_pb2.TrainJobSpec, context: Any) -> trainer_pb2.TrainJob:
        plan = plan_from_spec(request)
        runner = runner_from_proto(request.runner)
        if plan.method == Method.QLORA and (runner or self._manager.default_runner) == RunnerKind.LOCAL:
            # Other runners' machines are checked where the job runs.
            check_qlora_available()
        job = await asyncio.to_thread(
            self._manager.submit, spec_to_dict(request), runner, dict(request.labels)
        )
        return job_to_proto(job)

    async def GetJob(self, request: common_pb2.JobId, context: Any) -> trainer_pb2.TrainJob:
        return job_to_proto(await asyncio.to_thread(self._manager.get, request.job_id))

    async def ListJobs(
        self, request: common_pb2.ListJobsRequest, context: Any
    ) -> trainer_pb2.ListTrainJobsResponse:
        states = [_state(s) for s in request.states if s]
        jobs, token = await asyncio.to_thread(
            self._manager.list, states, request.page_size, request.page_token
        )
        return trainer_pb2.ListTrainJobsResponse(jobs=[job_to_proto(j) for j in jobs], next_page_token=token)

    async def WatchJob(
        self, request: common_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[common_pb2.JobEvent]:
        async for job, line in follow(self._manager, request.job_id, include_logs=request.include_logs):
            yield event_to_proto(job, line)

    async def CancelJob(self, request: common_pb2.JobId, context: Any) -> trainer_pb2.TrainJob:
        return job_to_proto(await asyncio.to_thread(self._manager.cancel, request.job_id))

    async def ResumeJob(self, request: common_pb2.JobId, context: Any) -> trainer_pb2.TrainJob:
        return job_to_proto(await asyncio.to_thread(self._manager.resume, request.job_id))


def _state(value: int) -> JobState:
    try:
        return JobState(value)
    except ValueError:
        raise InvalidArgument(f"states: {value} is not a JobState") from None


def open_manager(config: TrainerConfig) -> JobManager:
    store = JobStore(config.database())
    jobs = config.jobs
    return JobManager(
        store,
        kind=KIND,
        entry=ENTRY,
        runners=build_runners(jobs, config.work() / "logs", work_dir=config.work()),
        default_runner=jobs.runner,
        settings=config.job_settings(),
        id_prefix="train",
        max_concurrent=jobs.max_concurrent,
        max_attempts=jobs.max_attempts,
        poll_interval_s=jobs.poll_interval_s,
        liveness_interval_s=jobs.liveness_interval_s,
        num_workers=num_workers,
    )


@asynccontextmanager
async def trainer_services(config: TrainerConfig) -> AsyncIterator[list[GrpcService]]:
    """The trainer service for `cairn.common.server`; stops the job loop and closes the store on exit.

    Running jobs are left running: the next start reattaches to them.
    """
    manager = await asyncio.to_thread(open_manager, config)
    await asyncio.to_thread(manager.start)
    try:
        yield [
            GrpcService(
                SERVICE_NAME, TrainerServicer(manager), trainer_pb2_grpc.add_TrainerServicer_to_server
            )
        ]
    finally:
        await asyncio.to_thread(manager.stop)
        manager.store.close()


def serve(config: TrainerConfig) -> int:
    """Run the trainer until SIGTERM/SIGINT; the process exit code."""
    return run_service(config, trainer_services)
