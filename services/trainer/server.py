"""The `cairn.v1.Trainer` gRPC servicer over the shared job machinery (`cairn.jobs.service`).

Submissions are validated in full (`plan_from_spec`) before a job exists;
everything blocking (the store) runs on a thread.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

from cairn.common.server import GrpcService, run_service
from cairn.jobs.convert import runner_from_proto
from cairn.jobs.records import RunnerKind
from cairn.jobs.service import JobServicer, job_service, open_manager
from cairn.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

from .config import TrainerConfig
from .convert import job_to_proto, spec_from_dict, spec_to_dict
from .modeling import check_qlora_available
from .plan import Method, plan_from_spec

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name


def num_workers(spec: dict[str, Any]) -> int:
    return plan_from_spec(spec_from_dict(spec)).num_workers


class TrainerServicer(JobServicer, trainer_pb2_grpc.TrainerServicer):
    job_to_proto = staticmethod(job_to_proto)
    list_response = trainer_pb2.ListTrainJobsResponse

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

    async def ResumeJob(self, request: common_pb2.JobId, context: Any) -> trainer_pb2.TrainJob:
        return job_to_proto(await asyncio.to_thread(self._manager.resume, request.job_id))


def trainer_services(config: TrainerConfig) -> AbstractAsyncContextManager[list[GrpcService]]:
    """The trainer service for `cairn.common.server`."""
    open_ = partial(
        open_manager,
        config,
        kind="trainer",
        entry="cairn.services.trainer.work:run",
        id_prefix="train",
        num_workers=num_workers,
    )
    return job_service(open_, SERVICE_NAME, TrainerServicer, trainer_pb2_grpc.add_TrainerServicer_to_server)


def serve(config: TrainerConfig) -> int:
    """Run the trainer until SIGTERM/SIGINT; the process exit code."""
    return run_service(config, trainer_services)
