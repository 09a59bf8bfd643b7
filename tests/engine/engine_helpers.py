"""Small random HF models (the oracle) and helpers to drive runners over the same weights.

Every norm weight and bias is perturbed away from HF's 1/0 initialization,
so a weight the loader maps to the wrong place changes the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, MistralConfig, PreTrainedModel, Qwen2Config
from transformers import LlamaForCausalLM as HFLlama
from transformers import MistralForCausalLM as HFMistral
from transformers import Qwen2ForCausalLM as HFQwen2

from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput

VOCAB = 256
PROMPT_LENGTHS = (7, 13, 29, 41)
_SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.05,
    # No EOS: HF generate then runs to max_new_tokens, as the driver does.
    eos_token_id=None,
    bos_token_id=None,
    pad_token_id=None,
)
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
# name -> (HF model class, HF config)
VARIANTS: dict[str, tuple[type[PreTrainedModel], Any]] = {
    "llama-gqa": (HFLlama, LlamaConfig(**_SMALL)),
    "llama-3.2": (HFLlama, LlamaConfig(**_SMALL, rope_parameters=_LLAMA3_ROPE, tie_word_embeddings=True)),
    "llama-linear-rope": (
        HFLlama,
        LlamaConfig(**_SMALL, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
    ),
    "qwen2": (HFQwen2, Qwen2Config(**_SMALL, tie_word_embeddings=True)),
    "mistral": (HFMistral, MistralConfig(**_SMALL, sliding_window=None)),
}


@dataclass
class Checkpoint:
    path: Path
    hf: PreTrainedModel


def build_hf_model(model_class: type[PreTrainedModel], config: Any, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
            elif "norm" in name:
                param.normal_(1.0, 0.1)
    return model


def make_runner(
    path: Path, block_size: int = 5, num_blocks: int = 256, compile_mode: str | None = None, **overrides: Any
) -> ModelRunner:
    settings = dict(dtype="float32", device="cpu", max_num_seqs=16, max_num_batched_tokens=512) | overrides
    config = EngineConfig(model=str(path), block_size=block_size, num_blocks=num_blocks, **settings)
    runner = ModelRunner(config, compile_mode)
    runner.load()
    runner.profile_and_allocate_kv_cache()
    return runner


def prompts(seed: int = 0, lengths: tuple[int, ...] = PROMPT_LENGTHS) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def hf_logits(hf: PreTrainedModel, token_ids: list[int]) -> torch.Tensor:
    """[len, vocab] float32 logits of every position."""
    with torch.no_grad():
        return hf(input_ids=torch.tensor([token_ids])).logits[0].float()


def greedy(max_tokens: int = 16, **kwargs: Any) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kwargs)


class BlockAllocator:
    """Hands out consecutive block ids, as a scheduler would (no reuse needed in tests)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, count: int) -> list[int]:
        ids = list(range(self.next, self.next + count))
        self.next += count
        return ids


def prefill_step(
    seqs: list[tuple[int, list[int]]], blocks: BlockAllocator, block_size: int, params: SamplingParams
) -> StepInput:
    """Introduces and fully prefills each (seq_id, prompt), with blocks for 64 more tokens."""
    return StepInput(
        new_seqs=[NewSequence(seq_id, prompt, len(prompt), params) for seq_id, prompt in seqs],
        scheduled=[
            ScheduledSeq(seq_id, 0, len(prompt), blocks.take(-(-(len(prompt) + 64) // block_size)))
            for seq_id, prompt in seqs
        ],
    )
