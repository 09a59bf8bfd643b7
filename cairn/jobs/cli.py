"""The job commands every job service's CLI has: watch (a progress bar until the job ends), ls,
show and cancel. A service supplies what differs: the bar's text, the line after success, and an
`ls` row."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cairn.common.cli import ClientCommands

STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def state_name(value: int) -> str:
    """cairn.v1.JobState value -> "running", ..."""
    from cairn.v1 import common_pb2

    return common_pb2.JobState.Name(value).removeprefix("JOB_STATE_").lower()


def as_json(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@dataclass(frozen=True)
class JobCommands:
    """`describe(status)` is the progress bar's text, `succeeded(client, job_id, status)` prints the
    outcome of a job that succeeded, `row(job)` is its `ls` line."""

    client: ClientCommands
    describe: Callable[[Any], str]
    succeeded: Callable[[Any, str, Any], None]
    row: Callable[[Any], str]
    show_help: str = "a job's spec and status as JSON"

    def add(self, sub: argparse._SubParsersAction) -> None:
        """Adds watch, ls, show and cancel to `sub`."""
        watch = self.client.add(sub, "watch", "follow a job with a progress bar until it ends", self._watch)
        watch.add_argument("job_id")
        watch.add_argument("--logs", action="store_true", help="print the runner's log lines too")

        ls = self.client.add(sub, "ls", "list jobs, newest first", self._ls)
        ls.add_argument(
            "--state", action="append", choices=STATES, default=[], help="only these states (repeat)"
        )
        ls.add_argument("--json", action="store_true", help="one JSON object per line")

        show = self.client.add(sub, "show", self.show_help, self._show)
        show.add_argument("job_id")

        cancel = self.client.add(sub, "cancel", "stop a queued or running job", self._cancel)
        cancel.add_argument("job_id")

    def follow(self, client: Any, job_id: str, *, logs: bool) -> int:
        """A progress bar over the job's steps (on stderr); the exit status says how the job ended."""
        from tqdm import tqdm

        from cairn.v1 import common_pb2

        last = None
        with tqdm(desc=job_id, unit="step", dynamic_ncols=True, file=sys.stderr) as bar:
            for event in client.watch(job_id, include_logs=logs):
                if event.log:
                    bar.write(event.log)
                    continue
                last = event.status
                if last.progress.total_steps:
                    bar.total = last.progress.total_steps
                bar.n = last.progress.step
                bar.set_postfix_str(self.describe(last), refresh=False)
                bar.refresh()
        if last is None:
            return 1
        if last.state != common_pb2.JOB_STATE_SUCCEEDED:
            detail = f": {last.error}" if last.error else ""
            print(f"{job_id} {state_name(last.state)}{detail}", file=sys.stderr)
            return 1
        self.succeeded(client, job_id, last)
        return 0

    def _watch(self, client: Any, args: argparse.Namespace) -> int:
        return self.follow(client, args.job_id, logs=args.logs)

    def _ls(self, client: Any, args: argparse.Namespace) -> int:
        from cairn.v1 import common_pb2

        states = [common_pb2.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state]
        for job in client.list(states):
            print(json.dumps(as_json(job)) if args.json else self.row(job))
        return 0

    def _show(self, client: Any, args: argparse.Namespace) -> int:
        print(json.dumps(as_json(client.get(args.job_id)), indent=2))
        return 0

    def _cancel(self, client: Any, args: argparse.Namespace) -> int:
        job = client.cancel(args.job_id)
        print(f"{job.id} {state_name(job.status.state)}")
        return 0
