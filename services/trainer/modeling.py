"""Load the base model for a plan: precision, 4-bit quantization (QLoRA), adapters, checkpointing."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

from cairn.common.errors import FailedPrecondition

from .plan import LoraPlan, Method, TrainPlan

logger = logging.getLogger("cairn.trainer")

# Attention and MLP projections of the families cairn serves; other architectures adapt every linear layer.
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    family: _PROJECTIONS
    for family in ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "gemma", "gemma2")
}

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def check_qlora_available() -> None:
    """QLoRA's NF4 base needs bitsandbytes on a CUDA device."""
    if not torch.cuda.is_available():
        raise FailedPrecondition("method qlora needs a CUDA GPU (bitsandbytes 4-bit); none is available here")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise FailedPrecondition(
            "method qlora needs bitsandbytes, which is not installed; install cairn[qlora] on the GPU hosts"
        )


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested:
        return requested
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def target_modules(lora: LoraPlan, model_type: str) -> list[str] | str:
    if lora.target_modules == ("all-linear",):
        return "all-linear"
    if lora.target_modules:
        return list(lora.target_modules)
    return list(DEFAULT_TARGET_MODULES.get(model_type, ())) or "all-linear"


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path, plan: TrainPlan, device: torch.device, precision: str, *, deepspeed: bool) -> Any:
    """The model ready for training: frozen where the method says, adapter attached, on `device`.

    Frozen base weights load in the compute precision; weights that train stay
    fp32 (autocast computes in bf16/fp16), except under DeepSpeed, which keeps
    its own fp32 master copy of a bf16/fp16 model.
    """
    from transformers import AutoModelForCausalLM

    compute = _DTYPES[precision]
    full = plan.adapter is None
    load_dtype = torch.float32 if full and not deepspeed else compute
    kwargs: dict[str, Any] = {"dtype": load_dtype}
    if plan.method == Method.QLORA:
        check_qlora_available()
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.use_cache = False
    if plan.method == Method.QLORA:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=plan.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif plan.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not full:
        model = attach_adapter(model, plan)
    if plan.method != Method.QLORA and not deepspeed:
        model.to(device)
    return model


def attach_adapter(model: Any, plan: TrainPlan) -> Any:
    from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

    if plan.lora is not None:
        config: Any = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=plan.lora.r,
            lora_alpha=plan.lora.alpha,
            lora_dropout=plan.lora.dropout,
            target_modules=target_modules(plan.lora, model.config.model_type),
            bias="none",
        )
    else:
        config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=plan.prefix_tokens)
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("adapter %s: %d of %d parameters train (%.3f%%)", plan.adapter, trainable, total,
                100 * trainable / max(total, 1))  # fmt: skip
    return model
