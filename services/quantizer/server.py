"""The `cairn.v1.Quantizer` gRPC servicer over the shared job machinery (`cairn.jobs.service`).

Submissions are validated in full (`plan_from_spec`) before a job exists;
what needs the model (architecture, group-size divisibility) fails the job
with the same kind of message once its runner has the model. Everything
blocking (the store) runs on a thread.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

from cairn.common.server import GrpcService, run_service
from cairn.jobs.convert import runner_from_proto
from cairn.jobs.service import JobServicer, job_service, open_manager
from cairn.v1 import quantizer_pb2, quantizer_pb2_grpc

from .config import QuantizerConfig
from .convert import job_to_proto, spec_to_dict
from .plan import plan_from_spec

SERVICE_NAME = quantizer_pb2.DESCRIPTOR.services_by_name["Quantizer"].full_name


class QuantizerServicer(JobServicer, quantizer_pb2_grpc.QuantizerServicer):
    job_to_proto = staticmethod(job_to_proto)
    list_response = quantizer_pb2.ListQuantizeJobsResponse

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


def quantizer_services(config: QuantizerConfig) -> AbstractAsyncContextManager[list[GrpcService]]:
    """The quantizer service for `cairn.common.server`."""
    open_ = partial(
        open_manager, config, kind="quantizer", entry="cairn.services.quantizer.work:run", id_prefix="quant"
    )
    return job_service(
        open_, SERVICE_NAME, QuantizerServicer, quantizer_pb2_grpc.add_QuantizerServicer_to_server
    )


def serve(config: QuantizerConfig) -> int:
    """Run the quantizer until SIGTERM/SIGINT; the process exit code."""
    return run_service(config, quantizer_services)
