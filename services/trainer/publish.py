"""Save what a job trained and push it to the registry with its lineage.

Adapters go out in PEFT format ("peft-adapter", with the tokenizer and the base
model's pinned reference in adapter_config.json); full models as HF
directories ("hf-model") in the base model's dtype. A merge loads the base
afresh in its own precision and folds the adapter in, so a QLoRA adapter
merges into bf16 weights, not into its 4-bit training copy.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cairn.services.registry.records import Version

from .plan import TrainPlan

logger = logging.getLogger("cairn.trainer")

ADAPTER_FORMAT = "peft-adapter"
MODEL_FORMAT = "hf-model"


@dataclass(frozen=True)
class Published:
    version: Version
    merged: Version | None


def base_dtype(base_dir: Path) -> torch.dtype:
    config = json.loads((base_dir / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, name) if isinstance(getattr(torch, name, None), torch.dtype) else torch.float32


def save_adapter(module: Any, tokenizer: Any, out: Path, base_ref: str, state: dict[str, Any] | None) -> Path:
    module.save_pretrained(out, state_dict=state)
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    # The training copy's local path means nothing elsewhere; the registry reference does.
    config["base_model_name_or_path"] = base_ref
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    tokenizer.save_pretrained(out)
    return out


def save_model(
    module: Any, tokenizer: Any, out: Path, dtype: torch.dtype, state: dict[str, Any] | None
) -> Path:
    if state is None:
        module.to(dtype)
    else:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.config.use_cache = True
    module.save_pretrained(out, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def merge_adapter(base_dir: Path, adapter_dir: Path, tokenizer: Any, out: Path) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=base_dtype(base_dir))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def push(
    registry: Any,
    plan: TrainPlan,
    *,
    directory: Path,
    merged_directory: Path | None,
    base_ref: str,
    recipe: dict[str, Any],
    labels: dict[str, str],
) -> Published:
    fmt = ADAPTER_FORMAT if plan.adapter is not None else MODEL_FORMAT
    version = registry.push_dir(
        directory,
        plan.output_name,
        format=fmt,
        parents=[base_ref],
        recipe=recipe,
        aliases=plan.aliases,
        labels=labels,
        description=f"{plan.method.value} of {base_ref}",
    )
    logger.info("published %s (%s)", version.ref, fmt)
    merged = None
    if merged_directory is not None:
        merged = registry.push_dir(
            merged_directory,
            f"{plan.output_name}-merged",
            format=MODEL_FORMAT,
            parents=[base_ref, version.ref],
            recipe={**recipe, "merged_from": version.ref},
            aliases=plan.aliases,
            labels=labels,
            description=f"{version.ref} merged into {base_ref}",
        )
        logger.info("published %s (adapter merged into the base)", merged.ref)
    return Published(version, merged)
