"""The architecture facts the engine needs, parsed from an HF `config.json`.

One Llama-family implementation serves Llama 2/3.x, Mistral and Qwen2/2.5;
they differ only in biases, tied embeddings and rope scaling, which this
config spells out so the model code never looks at the architecture name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn.common.errors import InvalidArgument

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    # HF rope_scaling with "rope_type" always set; None for plain RoPE.
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_proj_bias: bool
    mlp_bias: bool
    # Mistral v0.1-style local attention window; the engine caps sequences to it.
    sliding_window: int | None
    # The checkpoint's dtype name ("bfloat16"), None when unstated.
    checkpoint_dtype: str | None
    eos_token_ids: tuple[int, ...] = field(default=())

    @property
    def max_model_len(self) -> int:
        """Longest sequence the model serves exactly: with a sliding window and
        only full attention kernels, positions past the window would see too much."""
        if self.sliding_window is not None:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @classmethod
    def from_dir(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / "config.json"
        if not path.is_file():
            raise InvalidArgument(f"{model_dir} has no config.json; expected an HF model directory")
        hf = json.loads(path.read_text())
        generation = model_dir / "generation_config.json"
        if generation.is_file() and "eos_token_id" in (extra := json.loads(generation.read_text())):
            hf = {**hf, "eos_token_id": extra["eos_token_id"]}
        return cls.from_hf(hf)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        architecture = _architecture(hf)
        if hf.get("hidden_act", "silu") != "silu":
            raise InvalidArgument(f"hidden_act {hf['hidden_act']!r} is not supported (only silu)")
        num_heads = hf["num_attention_heads"]
        num_kv_heads = hf.get("num_key_value_heads") or num_heads
        if num_heads % num_kv_heads:
            raise InvalidArgument(
                f"num_attention_heads {num_heads} is not a multiple of kv heads {num_kv_heads}"
            )
        rope_theta, rope_scaling = _rope(hf)
        attention_bias = bool(hf.get("attention_bias", False))
        is_qwen2 = architecture == "Qwen2ForCausalLM"
        sliding = hf.get("sliding_window") if hf.get("use_sliding_window", not is_qwen2) else None
        eos = hf.get("eos_token_id")
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
        return cls(
            architecture=architecture,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            # Qwen2 always biases q/k/v and never o_proj; Llama's attention_bias covers all four.
            qkv_bias=is_qwen2 or attention_bias,
            o_proj_bias=not is_qwen2 and attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            sliding_window=sliding,
            checkpoint_dtype=hf.get("dtype") or hf.get("torch_dtype"),
            eos_token_ids=eos_ids,
        )


def _architecture(hf: dict[str, Any]) -> str:
    declared = hf.get("architectures") or [_BY_MODEL_TYPE.get(hf.get("model_type", ""), "")]
    for name in declared:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    shown = ", ".join(n for n in declared if n) or f"model_type {hf.get('model_type')!r}"
    raise InvalidArgument(
        f"unsupported architecture {shown}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either transformers 5 `rope_parameters` or 4.x `rope_theta` + `rope_scaling`."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        supported = ", ".join(_SUPPORTED_ROPE_TYPES)
        raise InvalidArgument(f"rope_scaling type {rope_type!r} is not supported (supported: {supported})")
    if rope_type == "default":
        return theta, None
    return theta, {"rope_type": rope_type, **params}
