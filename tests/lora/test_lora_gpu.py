"""LoRA on CUDA: the Triton kernels inside the model and inside captured decode graphs.

Decoding a batch that mixes the base and three adapters through the CUDA graphs gives the
eager runner's tokens and logits (bf16), and fp32 graphs give the PEFT oracle's greedy tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lora_helpers import hf_logits, make_runner
from runner_probes import recorded_logits

from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
ADAPTERS = ["", "attn", "mlp", "qv", "attn", ""]
STEPS = 6


def _runner(model_dir: Path, peft_adapters: dict[str, tuple[Path, Any]], **overrides: Any) -> ModelRunner:
    runner = make_runner(model_dir, device="cuda", block_size=16, num_blocks=64, **overrides)
    for name in ("attn", "mlp", "qv"):
        runner.load_adapter(name, peft_adapters[name][0])
    return runner


def _decode(runner: ModelRunner, num_steps: int = 1) -> tuple[dict[int, list[int]], list[torch.Tensor]]:
    """Prefill one prompt per entry of ADAPTERS, then decode STEPS tokens; (tokens, decode logits)."""
    generator = torch.Generator().manual_seed(3)
    lengths = [5 + 3 * i for i in range(len(ADAPTERS))]
    prompts = [torch.randint(0, 2000, (n,), generator=generator).tolist() for n in lengths]
    params = SamplingParams(temperature=0.0, max_tokens=64)
    out = runner.step(
        StepInput(
            new_seqs=[
                NewSequence(i, p, len(p), params, adapter=a)
                for i, (p, a) in enumerate(zip(prompts, ADAPTERS, strict=True))
            ],
            scheduled=[ScheduledSeq(i, 0, len(p), [2 * i, 2 * i + 1]) for i, p in enumerate(prompts)],
        )
    )
    tokens = {o.seq_id: [*prompts[o.seq_id], o.tokens[0].token_id] for o in out.outputs}
    with recorded_logits(runner) as seen:
        for k in range(0, STEPS, num_steps):
            scheduled = [ScheduledSeq(i, len(prompts[i]) + k, 1) for i in range(len(prompts))]
            for o in runner.step(StepInput(scheduled=scheduled, num_steps=num_steps)).outputs:
                tokens[o.seq_id] += [t.token_id for t in o.tokens]
    runner.free(list(tokens))
    return tokens, seen


def test_graph_decode_with_mixed_adapters_equals_eager_bf16(tiny_model_dir, peft_adapters) -> None:
    graphs = _runner(tiny_model_dir, peft_adapters, dtype="bfloat16", max_num_seqs=8)
    eager = _runner(tiny_model_dir, peft_adapters, dtype="bfloat16", max_num_seqs=8, enforce_eager=True)
    assert graphs.graphs is not None and eager.graphs is None
    expected_tokens, expected_logits = _decode(eager)
    tokens, logits = _decode(graphs)
    assert tokens == expected_tokens
    for got, want in zip(logits, expected_logits, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    assert _decode(graphs, num_steps=3)[0] == expected_tokens


def test_graph_decode_matches_peft_fp32(tiny_model_dir, peft_adapters, hf_base) -> None:
    runner = _runner(tiny_model_dir, peft_adapters, max_num_seqs=8)
    oracles = {"": hf_base} | {name: model for name, (_, model) in peft_adapters.items()}
    tokens, logits = _decode(runner)
    for seq_id, adapter in enumerate(ADAPTERS):
        sequence = tokens[seq_id]
        expected = hf_logits(oracles[adapter], sequence[:-1])
        prompt_len = len(sequence) - STEPS - 1
        # Decode step k fed token prompt_len + k and produced the next one.
        for k in range(STEPS):
            want = expected[prompt_len + k]
            torch.testing.assert_close(logits[k][seq_id].cpu(), want, rtol=1e-3, atol=1e-3)
            assert sequence[prompt_len + k + 1] == int(want.argmax())
