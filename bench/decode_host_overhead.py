"""Host (Python) time of a batch-1 decode step on the CUDA-graph path, measured on the CPU.

    python bench/decode_host_overhead.py [--steps 900] [--repeats 3]

The tiny model's decode graphs are built on the CPU and each "replay" calls the
function a graph would have captured, so a `ModelRunner.step` runs exactly the
host code of a GPU step: admission checks, batch building, staging, sampling
setup, the token append and the outputs. The replay's own time (the device's
work on a GPU) is subtracted. Times are the thread's CPU time, which other
processes on the machine disturb less than the wall clock. On a GPU, where this
host time is exposed is what the `--profile` run of engine_decode.py shows as
long gaps between kernels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from cairn.services.worker.cuda_graphs import DecodeGraphs
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput

sys.path.insert(0, str(Path(__file__).parent))
from engine_decode import SHAPES

_CLOCK = time.thread_time
PROMPT_LEN = 16


class _Replay:
    """Stands in for a captured graph: runs the step function into the static outputs."""

    def __init__(self, graphs: DecodeGraphs, size: int, device_seconds: list[float]) -> None:
        self.graphs, self.size, self.device_seconds = graphs, size, device_seconds

    def replay(self) -> None:
        begin = _CLOCK()
        for static, fresh in zip(self.graphs.outputs[self.size], self.graphs.step(self.size), strict=True):
            static.copy_(fresh)
        self.device_seconds[0] += _CLOCK() - begin


def _timed(function: Callable, label: str, totals: Counter) -> Callable:
    def wrapper(*args: object, **kwargs: object) -> object:
        begin = _CLOCK()
        try:
            return function(*args, **kwargs)
        finally:
            totals[label] += _CLOCK() - begin

    return wrapper


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=900, help="timed decode steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    total_steps = 100 + (args.repeats + 1) * args.steps
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(SHAPES["tiny"]))
        runner = ModelRunner(
            EngineConfig(
                model=tmp,
                load_format="dummy",
                dtype="float32",
                device="cpu",
                num_blocks=-(-(PROMPT_LEN + total_steps) // 16) + 8,
                max_num_seqs=8,
                max_num_batched_tokens=512,
                max_model_len=PROMPT_LEN + total_steps + 1,
            )
        )
        runner.load()
    runner.profile_and_allocate_kv_cache()
    graphs = DecodeGraphs(runner.model, runner.kv_cache.layers, 8, runner.table.max_blocks_per_seq)
    device_seconds = [0.0]
    with torch.inference_mode():
        for size in graphs.sizes:
            graphs.outputs[size] = graphs.step(size)
            graphs.graphs[size] = _Replay(graphs, size, device_seconds)
    runner.graphs = graphs
    params = SamplingParams(temperature=0.0, max_tokens=total_steps + 1)
    blocks = list(range(-(-(PROMPT_LEN + total_steps) // 16)))
    prompt = list(range(1, PROMPT_LEN + 1))
    runner.step(
        StepInput(
            new_seqs=[NewSequence(0, prompt, PROMPT_LEN, params)],
            scheduled=[ScheduledSeq(0, 0, PROMPT_LEN, blocks)],
        )
    )
    position = PROMPT_LEN

    def steps(count: int) -> float:
        nonlocal position
        device_seconds[0] = 0.0
        inputs = [StepInput(scheduled=[ScheduledSeq(0, position + i, 1)]) for i in range(count)]
        begin = _CLOCK()
        for step in inputs:
            runner.step(step)
        position += count
        return (_CLOCK() - begin - device_seconds[0]) / count * 1e6

    steps(100)
    host_us = [steps(args.steps) for _ in range(args.repeats)]
    totals: Counter = Counter()
    for owner, name in (
        (runner, "_admit"),
        (runner.builder, "build"),
        (graphs, "stage"),
        (runner, "_sampling_batch"),
        (runner.table, "append_tokens"),
        (runner, "_tokens"),
    ):
        setattr(owner, name, _timed(getattr(owner, name), name.lstrip("_"), totals))
    breakdown_total = steps(args.steps)
    parts = {name: seconds / args.steps * 1e6 for name, seconds in totals.most_common()}
    parts["rest of step()"] = breakdown_total - sum(parts.values())
    print(f"host us per batch-1 decode step: median {statistics.median(host_us):.1f} of {host_us}")
    for name, us in parts.items():
        print(f"  {name:<16} {us:7.1f} us")


if __name__ == "__main__":
    main()
