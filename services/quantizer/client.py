"""Python client for the quantizer (blocking; for the CLI, notebooks and pipelines).

    client = QuantizerClient()               # $CAIRN_QUANTIZER or 127.0.0.1:50057
    job = client.submit(spec)                # a cairn.v1.QuantizeJobSpec
    for event in client.watch(job.id):       # current status first, then each change
        print(event.status.progress.message)

Failed calls raise the typed `cairn.common.errors` exception for their status.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from cairn.common.channel import make_channel, raise_for_rpc_error
from cairn.v1 import common_pb2, quantizer_pb2, quantizer_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50057"
TARGET_ENV = "CAIRN_QUANTIZER"

T = TypeVar("T")


def default_target() -> str:
    return os.environ.get(TARGET_ENV) or DEFAULT_TARGET


class QuantizerClient:
    def __init__(self, target: str | None = None, *, timeout: float = 30.0) -> None:
        """`timeout` bounds each call except `watch`, which lasts as long as the job."""
        self.target = target or default_target()
        self.timeout = timeout
        self._channel = make_channel(self.target, aio=False)
        self._stub = quantizer_pb2_grpc.QuantizerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> QuantizerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise_for_rpc_error(e)

    def submit(self, spec: quantizer_pb2.QuantizeJobSpec) -> quantizer_pb2.QuantizeJob:
        return self._call(self._stub.SubmitJob, spec)

    def get(self, job_id: str) -> quantizer_pb2.QuantizeJob:
        return self._call(self._stub.GetJob, common_pb2.JobId(job_id=job_id))

    def list(self, states: Iterable[int] = (), *, page_size: int = 0) -> Iterator[quantizer_pb2.QuantizeJob]:
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

    def cancel(self, job_id: str) -> quantizer_pb2.QuantizeJob:
        return self._call(self._stub.CancelJob, common_pb2.JobId(job_id=job_id))
