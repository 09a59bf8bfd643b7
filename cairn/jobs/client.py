"""The blocking client every job service shares (trainer, quantizer).

Both services expose the same job RPCs (SubmitJob, GetJob, ListJobs,
WatchJob, CancelJob) over their own stub; a service's client names its stub,
its default address and the environment variable that overrides it, and adds
whatever RPCs only it has.

Failed calls raise the typed `cairn.common.errors` exception for their status.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

import grpc

from cairn.common.channel import BlockingClient, make_channel, raise_for_rpc_error
from cairn.v1 import common_pb2

T = TypeVar("T")
Job = TypeVar("Job")


class JobServiceClient(BlockingClient, Generic[Job]):
    default_target: ClassVar[str]
    target_env: ClassVar[str]
    stub_class: ClassVar[Callable[[grpc.Channel], Any]]

    def __init__(self, target: str | None = None, *, timeout: float = 30.0) -> None:
        """`timeout` bounds each call except `watch`, which lasts as long as the job."""
        self.target = target or os.environ.get(self.target_env) or self.default_target
        self.timeout = timeout
        self._channel = make_channel(self.target, aio=False)
        self._stub = type(self).stub_class(self._channel)

    def submit(self, spec: Any) -> Job:
        return self._call(self._stub.SubmitJob, spec)

    def get(self, job_id: str) -> Job:
        return self._call(self._stub.GetJob, common_pb2.JobId(job_id=job_id))

    def list(self, states: Iterable[int] = (), *, page_size: int = 0) -> Iterator[Job]:
        """Every job (in `states`, if given), newest first, fetched page by page."""
        token = ""
        while True:
            request = common_pb2.ListJobsRequest(page_size=page_size, page_token=token, states=list(states))
            response = self._call(self._stub.ListJobs, request)
            yield from response.jobs
            token = response.next_page_token
            if not token:
                return

    def watch(self, job_id: str, *, include_logs: bool = False) -> Iterator[common_pb2.JobEvent]:
        request = common_pb2.WatchJobRequest(job_id=job_id, include_logs=include_logs)
        stream = self._stub.WatchJob(request)
        try:
            yield from stream
        except grpc.RpcError as e:
            raise_for_rpc_error(e)
        finally:
            stream.cancel()

    def cancel(self, job_id: str) -> Job:
        return self._call(self._stub.CancelJob, common_pb2.JobId(job_id=job_id))
