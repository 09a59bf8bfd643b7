"""The `cairn.v1.Quantizer` gRPC servicer over the shared job machinery.

Submissions are validated in full (`plan_from_spec`) before a job exists;
what needs the model (architecture, group-size divisibility) fails the job
with the same kind of message once its runner has the model. Everything
blocking (the store) runs on a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cairn.common.server import GrpcService, run_service
from cairn.jobs.config import build_runners
from cairn.jobs.convert import event_to_proto, runner_from_proto
from cairn.jobs.manager import JobManager
from cairn.jobs.states import JobState
from cairn.jobs.store import JobStore
from cairn.jobs.watch import follow
from cairn.v1 import common_pb2, quantizer_pb2, quantizer_pb2_grpc

from .config import QuantizerConfig
from .convert import job_to_proto, spec_to_dict
from .plan import plan_from_spec

SERVICE_NAME = quantizer_pb2.DESCRIPTOR.services_by_name["Quantizer"].full_name
KIND = "quantizer"
ENTRY = "cairn.services.quantizer.work:run"


class QuantizerServicer(quantizer_pb2_grpc.QuantizerServicer):
    def __init__(self, manager: JobManager) -> None:
        self._manager = manager

    async def SubmitJob(
        self, request: quantizer_pb2.QuantizeJobSpec, context: Any
    ) -> quantizer_pb2.QuantizeJob:
        plan = plan_from_spec(request)
        spec = quantizer_pb2.QuantizeJobSpec()
        spec.CopyFrom(request)
        # Stored with the defaulted output name, so the job's record says where it will publish.
        spec.output_name = plan.output_name
        labels = {"cairn.dev/method": plan.method.value}
        job = await asyncio.to_thread(
            self._manager.submit, spec_to_dict(spec), runner_from_proto(request.runner), labels
        )
        return job_to_proto(job)

    async def GetJob(self, request: common_pb2.JobId, context: Any) -> quantizer_pb2.QuantizeJob:
        return job_to_proto(await asyncio.to_thread(self._manager.get, request.job_id))

    async def ListJobs(
        self, request: common_pb2.ListJobsRequest, context: Any
    ) -> quantizer_pb2.ListQuantizeJobsResponse:
        states = [JobState(s) for s in request.states if s]
        jobs, token = await asyncio.to_thread(
            self._manager.list, states, request.page_size, request.page_token
        )
        return quantizer_pb2.ListQuantizeJobsResponse(
            jobs=[job_to_proto(j) for j in jobs], next_page_token=token
        )

    async def WatchJob(
        self, request: common_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[common_pb2.JobEvent]:
        async for job, line in follow(self._manager, request.job_id, include_logs=request.include_logs):
            yield event_to_proto(job, line)

    async def CancelJob(self, request: common_pb2.JobId, context: Any) -> quantizer_pb2.QuantizeJob:
        return job_to_proto(await asyncio.to_thread(self._manager.cancel, request.job_id))


def open_manager(config: QuantizerConfig) -> JobManager:
    store = JobStore(config.database())
    jobs = config.jobs
    return JobManager(
        store,
        kind=KIND,
        entry=ENTRY,
        runners=build_runners(jobs, config.work() / "logs"),
        default_runner=jobs.runner,
        settings=config.job_settings(),
        id_prefix="quant",
        max_concurrent=jobs.max_concurrent,
        max_attempts=jobs.max_attempts,
        poll_interval_s=jobs.poll_interval_s,
        liveness_interval_s=jobs.liveness_interval_s,
    )


@asynccontextmanager
async def quantizer_services(config: QuantizerConfig) -> AsyncIterator[list[GrpcService]]:
    """The quantizer service for `cairn.common.server`; stops the job loop and closes the store on exit.

    Running jobs are left running: the next start reattaches to them.
    """
    manager = await asyncio.to_thread(open_manager, config)
    await asyncio.to_thread(manager.start)
    try:
        yield [
            GrpcService(
                SERVICE_NAME, QuantizerServicer(manager), quantizer_pb2_grpc.add_QuantizerServicer_to_server
            )
        ]
    finally:
        await asyncio.to_thread(manager.stop)
        manager.store.close()


def serve(config: QuantizerConfig) -> int:
    """Run the quantizer until SIGTERM/SIGINT; the process exit code."""
    return run_service(config, quantizer_services)
