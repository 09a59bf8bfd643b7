"""Tensor-parallel test plumbing: the model variants, one step script every variant runs, and
the runs themselves, at one rank in this process or at several in a child process group.

The script covers what keeps ranks in step: chunked prefill, prefill and decodes in
one batch, tokens drawn at random (rank 0 draws, the others receive), greedy with a
penalty, multi-step decode both on the device-only argmax path and the sampled one,
prompt logprobs, a fork and a block copy, and finished sequences.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from cairn.services.worker import sampler
from cairn.services.worker.distributed import close_tensor_parallel, free_port, init_tensor_parallel
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.group import GroupRunner, follow, spawn_local_group
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput, StepOutput

BLOCK_SIZE = 4
BLOCKS_PER_SEQ = 10


def engine_config(model_dir: Path, tp: int, **overrides: Any) -> EngineConfig:
    settings: dict[str, Any] = {
        "model": str(model_dir),
        "device": "cpu",
        "dtype": "float32",
        "block_size": BLOCK_SIZE,
        "num_blocks": 64,
        "max_num_seqs": 4,
        "max_num_batched_tokens": 64,
        "max_model_len": 64,
        "tensor_parallel_size": tp,
    }
    return EngineConfig(**(settings | overrides))


def _blocks(seq: int) -> list[int]:
    return list(range(seq * BLOCKS_PER_SEQ, (seq + 1) * BLOCKS_PER_SEQ))


def step_script(vocab_size: int) -> list[StepInput]:
    rng = random.Random(7)

    def prompt(length: int) -> list[int]:
        return [rng.randrange(10, vocab_size - 10) for _ in range(length)]

    greedy = SamplingParams(temperature=0.0, max_tokens=64)
    drawn = SamplingParams(temperature=0.9, seed=5, max_tokens=64)
    penalized = SamplingParams(temperature=0.0, repetition_penalty=1.3, max_tokens=64)
    logprobs = SamplingParams(temperature=0.0, logprobs=3, prompt_logprobs=2, max_tokens=64)
    p0, p1, p2, p3, p4 = prompt(13), prompt(7), prompt(21), prompt(5), prompt(6)
    return [
        StepInput(
            new_seqs=[
                NewSequence(0, p0, 13, greedy),
                NewSequence(1, p1, 7, drawn),
                NewSequence(2, p2, 21, penalized),
            ],
            scheduled=[
                ScheduledSeq(0, 0, 13, _blocks(0)),
                ScheduledSeq(1, 0, 7, _blocks(1)),
                ScheduledSeq(2, 0, 10, _blocks(2), sample=False),
            ],
        ),
        StepInput(scheduled=[ScheduledSeq(0, 13, 1), ScheduledSeq(1, 7, 1), ScheduledSeq(2, 10, 11)]),
        StepInput(
            new_seqs=[NewSequence(3, p3, 5, greedy)],
            scheduled=[
                ScheduledSeq(3, 0, 5, _blocks(3)),
                ScheduledSeq(0, 14, 1),
                ScheduledSeq(1, 8, 1),
                ScheduledSeq(2, 21, 1),
            ],
        ),
        # Sampled multi-step: rank 0's tokens reach the others after every step.
        StepInput(
            scheduled=[
                ScheduledSeq(0, 15, 1),
                ScheduledSeq(1, 9, 1),
                ScheduledSeq(2, 22, 1),
                ScheduledSeq(3, 5, 1),
            ],
            num_steps=3,
        ),
        # Greedy multi-step: the tokens stay on the device, every rank takes its own argmax.
        StepInput(
            scheduled=[ScheduledSeq(0, 18, 1), ScheduledSeq(3, 8, 1)], finished_seq_ids=[1, 2], num_steps=4
        ),
        # Seq 3 has 13 tokens, 12 computed: a fork shares its 3 full blocks and gets its own tail.
        StepInput(
            new_seqs=[NewSequence(4, p4, 6, logprobs), NewSequence(5, [], 5, greedy, parent_seq_id=3)],
            scheduled=[
                ScheduledSeq(4, 0, 6, _blocks(4)),
                ScheduledSeq(0, 22, 1),
                ScheduledSeq(5, 12, 1, [50, 51]),
            ],
            block_copies=[(32, 52)],
        ),
        StepInput(scheduled=[ScheduledSeq(4, 6, 1), ScheduledSeq(5, 13, 1), ScheduledSeq(3, 12, 1)]),
    ]


@dataclass
class Run:
    """What rank 0 saw: the logits of every forward that needed some, the steps' outputs, and
    how many forwards replayed a CUDA graph."""

    logits: list[torch.Tensor]
    outputs: list[StepOutput]
    graph_replays: int = 0


def run_script(runner: ModelRunner | GroupRunner, vocab_size: int) -> Run:
    """Runs the script on a loaded runner (rank 0's, for a group), recording rank 0's logits."""
    inner = runner.runner if isinstance(runner, GroupRunner) else runner
    logits: list[torch.Tensor] = []
    forward = inner._logits

    def recording(*args: Any) -> Any:
        result = forward(*args)
        if result[0] is not None:
            logits.append(result[0].float().cpu().clone())
        return result

    inner._logits = recording
    replays = 0
    if inner.graphs is not None:
        replay = inner.graphs.run

        def counting(*args: Any) -> Any:
            nonlocal replays
            replays += 1
            return replay(*args)

        inner.graphs.run = counting
    table = inner.table
    outputs = []
    for step in step_script(vocab_size):
        # The fork repeats its parent's tokens (rank 0's table holds them, the others' too).
        for new in step.new_seqs:
            if new.parent_seq_id is not None:
                parent = table.get(new.parent_seq_id)
                new.token_ids = [int(t) for t in table.token_ids[parent.row, : table.num_tokens[parent.row]]]
        outputs.append(runner.step(step))
    runner.free(list(table.seqs))
    return Run(logits, outputs, replays)


def run_single(config: EngineConfig, vocab_size: int) -> Run:
    runner = ModelRunner(config)
    runner.load()
    runner.profile_and_allocate_kv_cache()
    return run_script(runner, vocab_size)


def run_group(configs: list[tuple[EngineConfig, int]], out: Path) -> None:
    """Child-process body: one group of tensor_parallel_size ranks runs every (config, vocab)
    in turn (a new GroupRunner per model, on the same ranks); the runs go to `out`."""
    torch.set_num_threads(1)
    first = spawn_local_group(configs[0][0])
    runs = []
    try:
        for index, (config, vocab_size) in enumerate(configs):
            runner = first if index == 0 else GroupRunner(config, first.tp)
            runner.load()
            runner.profile_and_allocate_kv_cache()
            runs.append(run_script(runner, vocab_size))
    finally:
        first.close()
    torch.save(runs, out)


def run_in_child(target: Any, *args: Any, timeout: float = 600) -> None:
    """Runs `target(*args)` as rank 0 in a child process (whose own children are the other
    ranks), one intra-op thread per process: the ranks share two cores."""
    context = torch.multiprocessing.get_context("spawn")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        process = context.Process(target=target, args=args)
        process.start()
    process.join(timeout=timeout)
    if process.is_alive():
        process.kill()
        pytest.fail(f"{target.__name__} did not finish in {timeout:.0f} s")
    assert process.exitcode == 0, f"{target.__name__} failed (exit code {process.exitcode})"


def _skewed_follower(rank: int, size: int, init_method: str) -> None:
    """A rank whose random draws differ from rank 0's (as another GPU's could): only taking
    rank 0's tokens keeps its sequences, and so everyone's logits, right."""
    draw = sampler._draw
    sampler._draw = lambda logits, batch: (draw(logits, batch) + 1) % logits.shape[-1]
    tp = init_tensor_parallel(rank, size, init_method, torch.device("cpu"))
    try:
        follow(tp, 0)
    finally:
        close_tensor_parallel(tp)


def run_skewed_group(config: EngineConfig, vocab_size: int, out: Path) -> None:
    """Child-process body: the script on a group whose other ranks draw differently."""
    torch.set_num_threads(1)
    size = config.tensor_parallel_size
    init_method = f"tcp://127.0.0.1:{free_port()}"
    context = torch.multiprocessing.get_context("spawn")
    followers = [
        context.Process(target=_skewed_follower, args=(rank, size, init_method), daemon=True)
        for rank in range(1, size)
    ]
    for process in followers:
        process.start()
    tp = init_tensor_parallel(0, size, init_method, torch.device("cpu"))
    runner = GroupRunner(config, tp, on_close=lambda: [process.join(60) for process in followers])
    try:
        runner.load()
        runner.profile_and_allocate_kv_cache()
        run = run_script(runner, vocab_size)
    finally:
        runner.close()
    torch.save(run, out)
