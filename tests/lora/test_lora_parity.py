"""A batch mixing the base model and several adapters through ModelRunner.step gives, per
sequence, the logits and greedy tokens of HF transformers with that PEFT adapter applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lora_helpers import BLOCK_SIZE, hf_logits, make_runner
from runner_probes import recorded_logits

from cairn.services.worker.cuda_graphs import DecodeGraphs
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput

TOL = {"rtol": 1e-4, "atol": 1e-4}
GREEDY = SamplingParams(temperature=0.0, max_tokens=64)


def _blocks(start: int, tokens: int) -> list[int]:
    count = -(-tokens // BLOCK_SIZE)
    return list(range(start, start + count))


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path, peft_adapters: dict[str, tuple[Path, Any]]):
    runner = make_runner(tiny_model_dir)
    for name in ("attn", "mlp", "qv"):
        runner.load_adapter(name, peft_adapters[name][0])
    return runner


def test_mixed_batch_matches_peft(runner, peft_adapters, hf_base) -> None:
    oracles = {"": hf_base} | {name: model for name, (_, model) in peft_adapters.items()}
    generator = torch.Generator().manual_seed(0)
    # (seq id, adapter, prompt length): two sequences share an adapter, one runs on the base.
    seqs = [(0, "", 9), (1, "attn", 6), (2, "mlp", 13), (3, "qv", 5), (4, "attn", 11)]
    tokens = {sid: torch.randint(0, 2000, (n,), generator=generator).tolist() for sid, _, n in seqs}
    adapter = {sid: name for sid, name, _ in seqs}
    late_id, late_prompt = 5, torch.randint(0, 2000, (7,), generator=generator).tolist()
    adapter[late_id], tokens[late_id] = "qv", late_prompt
    # 40 tokens of blocks each, so decode steps never need new ones.
    block_ids = {sid: _blocks(sid * 10, 40) for sid in tokens}

    def check(step: StepInput, order: list[int]) -> None:
        with recorded_logits(runner) as seen:
            output = runner.step(step)
        (logits,) = seen
        produced = {o.seq_id: o.tokens[0].token_id for o in output.outputs}
        assert sorted(produced) == sorted(order)
        for row, sid in enumerate(order):
            expected = hf_logits(oracles[adapter[sid]], tokens[sid])[-1]
            torch.testing.assert_close(logits[row], expected, **TOL)
            assert produced[sid] == int(expected.argmax())
            tokens[sid].append(produced[sid])

    check(
        StepInput(
            new_seqs=[NewSequence(sid, tokens[sid], n, GREEDY, adapter=name) for sid, name, n in seqs],
            scheduled=[ScheduledSeq(sid, 0, n, block_ids[sid]) for sid, _, n in seqs],
        ),
        [sid for sid, _, _ in seqs],
    )
    running = [sid for sid, _, _ in seqs]
    for _ in range(2):
        decode = [ScheduledSeq(sid, len(tokens[sid]) - 1, 1) for sid in running]
        check(StepInput(scheduled=decode), running)
    # A prefill joins the decodes: the batch puts decodes first, the chunk after them.
    decode = [ScheduledSeq(sid, len(tokens[sid]) - 1, 1) for sid in running]
    joining = NewSequence(late_id, late_prompt, len(late_prompt), GREEDY, adapter="qv")
    check(
        StepInput(
            new_seqs=[joining],
            scheduled=[ScheduledSeq(late_id, 0, len(late_prompt), block_ids[late_id]), *decode],
        ),
        [*running, late_id],
    )
    runner.free(list(tokens))


def test_adapter_changes_the_output(runner, tiny_model_dir: Path) -> None:
    # The same prompt on the base and on an adapter: the adapter must make a difference.
    prompt = list(range(100, 112))
    step = StepInput(
        new_seqs=[
            NewSequence(10, prompt, len(prompt), GREEDY),
            NewSequence(11, prompt, len(prompt), GREEDY, adapter="mlp"),
        ],
        scheduled=[ScheduledSeq(10, 0, len(prompt), _blocks(0, 16)), ScheduledSeq(11, 0, 12, _blocks(8, 16))],
    )
    with recorded_logits(runner) as seen:
        runner.step(step)
    assert not torch.allclose(seen[0][0], seen[0][1], atol=1e-3)
    runner.free([10, 11])


def test_decode_graph_inputs_carry_the_adapter_mapping(runner, peft_adapters, hf_base) -> None:
    # The decode graphs' step, run uncaptured on the CPU: their staged buffers (padded to a
    # bucket, tokens grouped by adapter slot) give the eager step's logits; base-only batches too.
    graphs = DecodeGraphs(
        runner.model, runner.kv_cache.layers, runner.config.max_num_seqs, runner.table.max_blocks_per_seq,
        lora=runner.lora,
    )  # fmt: skip
    prompts = {
        20: ("qv", [3, 1, 4, 1, 5]),
        21: ("", [9, 2, 6]),
        22: ("mlp", [5, 3, 5, 8, 9, 7]),
        23: ("", [7]),
    }
    runner.step(
        StepInput(
            new_seqs=[NewSequence(s, p, len(p), GREEDY, adapter=a) for s, (a, p) in prompts.items()],
            scheduled=[
                ScheduledSeq(s, 0, len(p), _blocks(4 * (s - 20), 16)) for s, (_, p) in prompts.items()
            ],
        )
    )
    for ids in ([20, 21, 22], [21, 23]):
        states = [runner.table.get(s) for s in ids]
        rows = np.array([s.row for s in states])
        starts = runner.table.num_tokens[rows] - 1
        ones = np.ones(len(ids), dtype=np.int64)
        batch = runner.builder.build(states, rows, starts, ones, ones.astype(bool))
        size = graphs.stage(batch)
        assert size == 4 if len(ids) == 3 else size == len(ids)
        logits, _ = graphs.forward(size)
        with recorded_logits(runner) as seen:
            runner.step(
                StepInput(scheduled=[ScheduledSeq(s, int(n), 1) for s, n in zip(ids, starts, strict=True)])
            )
        torch.testing.assert_close(logits[: len(ids)], seen[0], rtol=1e-5, atol=1e-5)
    runner.free(list(prompts))
