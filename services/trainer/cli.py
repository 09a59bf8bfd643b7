"""`cairn trainer serve` runs the service; `cairn train ...` submits, watches, lists, cancels, resumes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cairn.common.cli import ClientCommands
from cairn.common.server import add_serve_command
from cairn.jobs.cli import JobCommands, state_name

from .config import TrainerConfig

PROG = "cairn train"


def _services(config: TrainerConfig) -> Any:
    from .server import trainer_services

    return trainer_services(config)


def register(subparsers: argparse._SubParsersAction) -> None:
    service = subparsers.add_parser("trainer", help="the fine-tuning service")
    add_serve_command(service.add_subparsers(dest="trainer_command", required=True), TrainerConfig, _services)

    train = subparsers.add_parser(
        "train",
        help="fine-tune jobs: submit, watch, ls, show, cancel, resume",
        description="Talk to the trainer at --trainer, else $CAIRN_TRAINER, else 127.0.0.1:50056.",
    )
    sub = train.add_subparsers(dest="train_command", metavar="COMMAND", required=True)

    submit = _CLIENT.add(
        sub, "submit", "submit a job described by a YAML file (TrainJobSpec fields)", _submit
    )
    submit.add_argument("file", type=Path, help="job file, e.g. job.yaml")
    submit.add_argument("--watch", action="store_true", help="follow the job until it ends")

    _JOBS.add(sub)

    resume = _CLIENT.add(sub, "resume", "requeue a failed or cancelled job from its last checkpoint", _resume)
    resume.add_argument("job_id")


def _connect(address: str | None) -> Any:
    from cairn.services.trainer.client import TrainerClient

    return TrainerClient(address)


_CLIENT = ClientCommands(PROG, "trainer", "--trainer", "CAIRN_TRAINER", "127.0.0.1:50056", _connect)


def _submit(client: Any, args: argparse.Namespace) -> int:
    from .jobfile import load_job_file
    from .plan import plan_from_spec

    spec = load_job_file(args.file)
    plan_from_spec(spec)
    job = client.submit(spec)
    print(
        f"submitted {job.id} ({state_name(job.status.state)}, output {plan_from_spec(job.spec).output_name})"
    )
    if args.watch:
        return _JOBS.follow(client, job.id, logs=False)
    return 0


def _describe(status: Any) -> str:
    """State, loss, eval loss, learning rate and ETA, those the runner reported."""
    progress = status.progress
    fields = [state_name(status.state)]
    if progress.HasField("loss"):
        fields.append(f"loss={progress.loss:.4f}")
    if progress.HasField("eval_loss"):
        fields.append(f"eval={progress.eval_loss:.4f}")
    if progress.HasField("learning_rate"):
        fields.append(f"lr={progress.learning_rate:.2e}")
    if progress.HasField("eta_seconds"):
        fields.append(f"eta={progress.eta_seconds:.0f}s")
    return ", ".join(fields)


def _succeeded(client: Any, job_id: str, status: Any) -> None:
    result = f"{status.result.model}@{status.result.version}" if status.result.model else "no result"
    print(f"{job_id} succeeded: published {result}")


def _row(job: Any) -> str:
    from cairn.v1 import trainer_pb2

    progress = job.status.progress
    steps = f"{progress.step}/{progress.total_steps}" if progress.total_steps else "-"
    loss = f"{progress.loss:.4f}" if progress.HasField("loss") else "-"
    method = trainer_pb2.TrainMethod.Name(job.spec.method).removeprefix("TRAIN_METHOD_").lower()
    created = job.status.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M")
    return (
        f"{job.id}  {state_name(job.status.state):9}  {method:13}  {job.spec.base_model.ref:24}  "
        f"{steps:>11}  loss {loss:>8}  {created}"
    )


_JOBS = JobCommands(_CLIENT, _describe, _succeeded, _row)


def _resume(client: Any, args: argparse.Namespace) -> int:
    job = client.resume(args.job_id)
    step = job.status.checkpoint_step
    print(f"{job.id} {state_name(job.status.state)}" + (f"; resumes from step {step}" if step else ""))
    return 0
