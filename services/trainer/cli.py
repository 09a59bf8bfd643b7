"""`cairn trainer serve` runs the service; `cairn train ...` submits, watches, lists, cancels, resumes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cairn.common.cli import ClientCommands
from cairn.common.server import add_serve_command

from .config import TrainerConfig

PROG = "cairn train"
_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


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

    watch = _CLIENT.add(sub, "watch", "follow a job with a progress bar until it ends", _watch)
    watch.add_argument("job_id")
    watch.add_argument("--logs", action="store_true", help="print the runner's log lines too")

    ls = _CLIENT.add(sub, "ls", "list jobs, newest first", _ls)
    ls.add_argument(
        "--state", action="append", choices=_STATES, default=[], help="only these states (repeat)"
    )
    ls.add_argument("--json", action="store_true", help="one JSON object per line")

    show = _CLIENT.add(sub, "show", "a job's spec and status as JSON", _show)
    show.add_argument("job_id")

    cancel = _CLIENT.add(sub, "cancel", "stop a queued or running job", _cancel)
    cancel.add_argument("job_id")

    resume = _CLIENT.add(sub, "resume", "requeue a failed or cancelled job from its last checkpoint", _resume)
    resume.add_argument("job_id")


def _connect(address: str | None) -> Any:
    from cairn.services.trainer.client import TrainerClient

    return TrainerClient(address)


_CLIENT = ClientCommands(PROG, "trainer", "--trainer", "CAIRN_TRAINER", "127.0.0.1:50056", _connect)


def _state(value: int) -> str:
    from cairn.v1 import common_pb2

    return common_pb2.JobState.Name(value).removeprefix("JOB_STATE_").lower()


def _as_json(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _submit(client: Any, args: argparse.Namespace) -> int:
    from .jobfile import load_job_file
    from .plan import plan_from_spec

    spec = load_job_file(args.file)
    plan_from_spec(spec)
    job = client.submit(spec)
    print(f"submitted {job.id} ({_state(job.status.state)}, output {plan_from_spec(job.spec).output_name})")
    if args.watch:
        return _follow(client, job.id, logs=False)
    return 0


def _watch(client: Any, args: argparse.Namespace) -> int:
    return _follow(client, args.job_id, logs=args.logs)


def _follow(client: Any, job_id: str, *, logs: bool) -> int:
    """A tqdm bar over optimizer steps with loss, lr and ETA; the exit status says how the job ended."""
    from tqdm import tqdm

    from cairn.v1 import common_pb2

    last = None
    with tqdm(desc=job_id, unit="step", dynamic_ncols=True) as bar:
        for event in client.watch(job_id, include_logs=logs):
            if event.log:
                bar.write(event.log)
                continue
            last = event.status
            progress = last.progress
            if progress.total_steps and bar.total != progress.total_steps:
                bar.total = progress.total_steps
            bar.n = progress.step
            fields = {"state": _state(last.state)}
            if progress.HasField("loss"):
                fields["loss"] = f"{progress.loss:.4f}"
            if progress.HasField("eval_loss"):
                fields["eval"] = f"{progress.eval_loss:.4f}"
            if progress.HasField("learning_rate"):
                fields["lr"] = f"{progress.learning_rate:.2e}"
            if progress.HasField("eta_seconds"):
                fields["eta"] = f"{progress.eta_seconds:.0f}s"
            bar.set_postfix(fields, refresh=False)
            bar.refresh()
    if last is None:
        return 1
    if last.state == common_pb2.JOB_STATE_SUCCEEDED:
        result = f"{last.result.model}@{last.result.version}" if last.result.model else "no result"
        print(f"{job_id} succeeded: published {result}")
        return 0
    detail = f": {last.error}" if last.error else ""
    print(f"{job_id} {_state(last.state)}{detail}", file=sys.stderr)
    return 1


def _ls(client: Any, args: argparse.Namespace) -> int:
    from cairn.v1 import common_pb2, trainer_pb2

    states = [common_pb2.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state]
    for job in client.list(states):
        if args.json:
            print(json.dumps(_as_json(job)))
            continue
        progress = job.status.progress
        steps = f"{progress.step}/{progress.total_steps}" if progress.total_steps else "-"
        loss = f"{progress.loss:.4f}" if progress.HasField("loss") else "-"
        method = trainer_pb2.TrainMethod.Name(job.spec.method).removeprefix("TRAIN_METHOD_").lower()
        created = job.status.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M")
        print(
            f"{job.id}  {_state(job.status.state):9}  {method:13}  {job.spec.base_model.ref:24}  "
            f"{steps:>11}  loss {loss:>8}  {created}"
        )
    return 0


def _show(client: Any, args: argparse.Namespace) -> int:
    print(json.dumps(_as_json(client.get(args.job_id)), indent=2))
    return 0


def _cancel(client: Any, args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    print(f"{job.id} {_state(job.status.state)}")
    return 0


def _resume(client: Any, args: argparse.Namespace) -> int:
    job = client.resume(args.job_id)
    step = job.status.checkpoint_step
    print(f"{job.id} {_state(job.status.state)}" + (f"; resumes from step {step}" if step else ""))
    return 0
