"""Times the scheduler's Python per step and writes bench/results/scheduler_overhead.json.

    python bench/scheduler_overhead.py [--seqs 256] [--out bench/results/scheduler_overhead.json]

Cases, each with `--seqs` sequences in steady state:
  - decode: every sequence decodes one token per step;
  - decode x8: the same with num_scheduler_steps=8 (one schedule/update per 8 tokens);
  - mixed: decodes plus a stream of 1k-token prompts through chunked prefill.
Reported: CPU time (process_time, so other load on the host does not count)
of schedule() and update(), median and p90 over the measured steps. The
worker is a stand-in that returns a fixed token: only scheduler work is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from cairn.services.scheduler.block_manager import BlockManager
from cairn.services.scheduler.config import SchedulerConfig
from cairn.services.scheduler.policy import Scheduler, SchedulerStep
from cairn.services.scheduler.sequence import Request
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import SampledToken, SeqOutput, StepOutput

TOKEN = SampledToken(7)


def _output(step: SchedulerStep) -> StepOutput:
    tokens = [TOKEN] * step.input.num_steps
    return StepOutput([SeqOutput(s.seq_id, tokens) for s in step.input.scheduled if s.sample])


def _case(name: str, seqs: int, steps: int, num_scheduler_steps: int = 1, prompts_per_step: int = 0) -> dict:
    config = SchedulerConfig(
        max_num_seqs=seqs + 64,
        max_num_batched_tokens=8192,
        max_model_len=8192,
        num_scheduler_steps=num_scheduler_steps,
    )
    scheduler = Scheduler(config, BlockManager(200_000, config.block_size))
    never_stop = SamplingParams(max_tokens=4096, ignore_eos=True)
    for i in range(seqs):
        scheduler.add_request(Request(f"decode{i}", list(range(i, i + 300)), never_stop))
    while any(s.num_computed_tokens < 300 for s in scheduler.running) or len(scheduler.waiting):
        step = scheduler.schedule()
        scheduler.update(step, _output(step))
    schedule_s, update_s = [], []
    for i in range(steps):
        for j in range(prompts_per_step):
            scheduler.add_request(Request(f"prompt{i}.{j}", list(range(1000)), SamplingParams(max_tokens=1)))
        start = time.process_time()
        step = scheduler.schedule()
        middle = time.process_time()
        output = _output(step)
        resumed = time.process_time()
        scheduler.update(step, output)
        end = time.process_time()
        schedule_s.append(middle - start)
        update_s.append(end - resumed)

    def summary(values: list[float]) -> dict:
        ordered = sorted(values)
        return {
            "median_us": statistics.median(ordered) * 1e6,
            "p90_us": ordered[int(0.9 * len(ordered))] * 1e6,
        }

    return {"case": name, "seqs": seqs, "schedule": summary(schedule_s), "update": summary(update_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [
        _case("decode", args.seqs, args.steps),
        _case("decode x8", args.seqs, args.steps // 8, num_scheduler_steps=8),
        _case("mixed", args.seqs, args.steps, prompts_per_step=1),
    ]
    for row in results:
        schedule, update = row["schedule"], row["update"]
        print(
            f"{row['case']:>10}  schedule {schedule['median_us']:7.0f} us (p90 {schedule['p90_us']:.0f})"
            f"  update {update['median_us']:7.0f} us (p90 {update['p90_us']:.0f})"
        )
    if args.out is not None:
        host = {"python": platform.python_version(), "machine": platform.machine(), "cores": os.cpu_count()}
        args.out.write_text(json.dumps({"host": host, "cases": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
