"""PEFT LoRA adapters of the tiny model made with `peft` itself, and runners to serve them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.model_runner import ModelRunner

# name -> LoraConfig keywords: ranks 2 to 16, fused shards targeted alone (q and v without k, up
# without gate), per-module rank and alpha patterns, rsLoRA.
ADAPTERS: dict[str, dict[str, Any]] = {
    "attn": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "mlp": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["gate_proj", "up_proj", "down_proj"]),
    "qv": dict(
        r=2,
        lora_alpha=4,
        target_modules=["q_proj", "v_proj", "up_proj"],
        rank_pattern={"v_proj": 6},
        alpha_pattern={"q_proj": 3},
    ),
    "wide": dict(r=16, lora_alpha=16, target_modules=["q_proj", "o_proj"]),
}
BLOCK_SIZE = 4


def make_adapter(base_dir: Path, out: Path, seed: int, **lora: Any) -> Any:
    """Saves a PEFT adapter of the model in `base_dir` to `out` with every A and B random and
    non-zero (PEFT starts B at zero, which would make any adapter look right); returns the
    PEFT model, the oracle."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(out)
    return model.eval()


def hf_logits(model: Any, token_ids: list[int]) -> torch.Tensor:
    """[len, vocab] float32 logits of every position."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([token_ids])).logits[0].float()


def make_runner(model_dir: Path, **overrides: Any) -> ModelRunner:
    settings = dict(
        dtype="float32",
        device="cpu",
        block_size=BLOCK_SIZE,
        num_blocks=256,
        max_num_seqs=8,
        max_num_batched_tokens=256,
        max_loras=3,
        max_lora_rank=8,
    )
    runner = ModelRunner(EngineConfig(model=str(model_dir), **(settings | overrides)))
    runner.load()
    runner.profile_and_allocate_kv_cache()
    return runner
