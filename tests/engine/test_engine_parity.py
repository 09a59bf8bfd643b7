"""The paged engine against HF transformers on the same weights: logits and greedy tokens.

Four prompts of different lengths (7, 13, 29, 41) share every step, with a
block size that divides none of them, so block boundaries fall mid-sequence.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import (
    VARIANTS,
    BlockAllocator,
    greedy,
    hf_logits,
    make_runner,
    prefill_step,
    prompts,
)
from runner_probes import recorded_logits

from cairn.services.worker.step import ScheduledSeq, StepInput

NEW_TOKENS = 64
TOLERANCE = 1e-4
BLOCK_SIZES = {"llama-gqa": 5, "llama-3.2": 16, "llama-linear-rope": 6, "qwen2": 5, "mistral": 16}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_and_greedy_tokens_match_hf(checkpoint, variant: str) -> None:
    ckpt = checkpoint(variant)
    block_size = BLOCK_SIZES[variant]
    runner = make_runner(ckpt.path, block_size=block_size)
    batch = prompts(seed=1)
    seq_ids = [10, 11, 12, 13]
    generated: dict[int, list[int]] = {s: [] for s in seq_ids}
    with recorded_logits(runner) as logits:
        step = prefill_step(
            list(zip(seq_ids, batch, strict=True)), BlockAllocator(), block_size, greedy(NEW_TOKENS)
        )
        for _ in range(NEW_TOKENS):
            for output in runner.step(step).outputs:
                generated[output.seq_id] += [t.token_id for t in output.tokens]
            step = StepInput(
                scheduled=[
                    ScheduledSeq(s, len(p) + len(generated[s]) - 1, 1)
                    for s, p in zip(seq_ids, batch, strict=True)
                ]
            )
    assert len(logits) == NEW_TOKENS
    for row, (seq_id, prompt) in enumerate(zip(seq_ids, batch, strict=True)):
        full = prompt + generated[seq_id]
        reference = hf_logits(ckpt.hf, full)
        ours = torch.stack([step_logits[row] for step_logits in logits])
        # Step k's logits are those of position len(prompt) - 1 + k.
        expected = reference[len(prompt) - 1 : len(prompt) - 1 + NEW_TOKENS]
        torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)
        hf_tokens = ckpt.hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
        )[0, len(prompt) :].tolist()
        assert generated[seq_id] == hf_tokens
