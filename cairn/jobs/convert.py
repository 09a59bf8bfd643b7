"""Job records to the shared `cairn.v1` job messages."""

from __future__ import annotations

from cairn.common.timestamps import to_timestamp
from cairn.v1 import common_pb2

from .records import Job, Progress, RunnerKind

RUNNER_TO_PROTO = {
    RunnerKind.LOCAL: common_pb2.RUNNER_KIND_LOCAL,
    RunnerKind.RAY: common_pb2.RUNNER_KIND_RAY,
    RunnerKind.KUBERNETES: common_pb2.RUNNER_KIND_KUBERNETES,
}
RUNNER_FROM_PROTO = {v: k for k, v in RUNNER_TO_PROTO.items()}


def runner_from_proto(value: int) -> RunnerKind | None:
    """None for RUNNER_KIND_DEFAULT: the service's default."""
    return RUNNER_FROM_PROTO.get(value)


def progress_to_proto(progress: Progress) -> common_pb2.JobProgress:
    return common_pb2.JobProgress(**progress.to_dict())


def status_to_proto(job: Job) -> common_pb2.JobStatus:
    status = common_pb2.JobStatus(
        state=int(job.state),
        progress=progress_to_proto(job.progress),
        error=job.error,
        created_at=to_timestamp(job.created_at),
        started_at=to_timestamp(job.started_at),
        finished_at=to_timestamp(job.finished_at),
        attempts=job.attempts,
        checkpoint_step=job.checkpoint.step if job.checkpoint else 0,
        runner=RUNNER_TO_PROTO[job.runner],
    )
    if job.result is not None and job.result.model:
        status.result.CopyFrom(common_pb2.VersionRef(model=job.result.model, version=job.result.version))
    return status


def event_to_proto(job: Job, log: str = "") -> common_pb2.JobEvent:
    return common_pb2.JobEvent(job_id=job.id, status=status_to_proto(job), log=log)
