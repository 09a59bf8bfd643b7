"""Entry points the job tests run in real child processes, steered through files so nothing depends on timing.

The spec says what to do:
    steps           how many steps to report (one checkpoint each)
    dir             a directory for markers: the work writes `attempt<N>-step<K>` after each step
    hold_at         on attempt `hold_attempt` (default 1), wait after this step until `dir/release` exists
    fail_at         raise InvalidArgument at this step
    crash_at        die without a word (os._exit) at this step, on every attempt
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cairn.common.errors import InvalidArgument
from cairn.jobs.context import JobContext
from cairn.jobs.records import JobResult, Progress


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.02)


def stepper(ctx: JobContext) -> JobResult:
    spec = ctx.spec
    steps = int(spec["steps"])
    marks = Path(spec["dir"])
    start = ctx.resume_from.step if ctx.resume_from else 0
    # Ranks meet before working, as real ones do in their first collective: a rank
    # that started after the job finished would rightly find nothing to do.
    (marks / f"attempt{ctx.attempt}-ready{ctx.rank}").touch()
    for rank in range(ctx.world_size):
        _wait_for(marks / f"attempt{ctx.attempt}-ready{rank}")
    ctx.log(f"rank {ctx.rank}/{ctx.world_size} starting at step {start}")
    for step in range(start + 1, steps + 1):
        if spec.get("crash_at") == step:
            os._exit(9)
        if spec.get("fail_at") == step:
            raise InvalidArgument(f"bad input at step {step}")
        ctx.report(Progress(step=step, total_steps=steps, loss=1.0 / step, message=f"step {step}"))
        ctx.record_checkpoint(step, str(marks / f"ckpt-{step}"))
        (marks / f"attempt{ctx.attempt}-rank{ctx.rank}-step{step}").touch()
        ctx.log(f"finished step {step}")
        if spec.get("hold_at") == step and ctx.attempt == spec.get("hold_attempt", 1):
            _wait_for(marks / "release")
    return JobResult(
        model="stepper-out",
        version=ctx.attempt,
        metrics={"final_loss": 1.0 / steps},
        details={"started_from": start, "world_size": ctx.world_size},
    )
