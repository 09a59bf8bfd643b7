"""Build a small Hugging Face model directory with random weights and a local tokenizer.

The result is a genuine checkpoint of a real architecture (Llama, Qwen2 or
Mistral), loadable by `transformers` and by anything that reads HF layouts,
so the engine can be tested against `transformers` as its oracle without a
model hub. The same arguments always give byte-identical files.

Weights are not HF's default init (std 0.02, norms at 1, biases at 0): every
matrix is drawn with std 1/sqrt(fan_in), so activations and logits stay O(1)
at any shape and greedy decoding is not a string of near-ties, and norm
weights and biases are random too, so an engine that drops a bias or a norm
weight produces visibly different logits.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Any

from cairn.common.errors import AlreadyExists, InvalidArgument
from cairn.tiny.tokenizer import (
    BOS_TOKEN,
    END_OF_TEXT,
    END_OF_TURN,
    PAD_TOKEN,
    save_tokenizer,
    train_tokenizer,
)

ARCHITECTURES = ("llama", "qwen2", "mistral")
DTYPES = ("float32", "bfloat16", "float16")

# Published defaults of each family: Llama 3, Qwen2.5, Mistral v0.2+.
_ROPE_THETA = {"llama": 500_000.0, "qwen2": 1_000_000.0, "mistral": 1_000_000.0}
_TIED_BY_DEFAULT = {"llama": False, "qwen2": True, "mistral": False}

_NORM_WEIGHT_STD = 0.1
_BIAS_STD = 0.1


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int = 2048,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    dtype: str = "float32",
    architecture: str = "llama",
    tie_word_embeddings: bool | None = None,
    rope_scaling: dict[str, Any] | None = None,
    sliding_window: int | None = None,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Write the model directory `out_dir` (which must be absent or empty) and return its path.

    `tie_word_embeddings=None` takes the family's default (tied for qwen2).
    `rope_scaling` is an HF rope-scaling dict (e.g. Llama 3.1's
    `{"rope_type": "llama3", "factor": 8.0, ...}`); `sliding_window` is for
    mistral only; `max_shard_size` smaller than the weights gives a sharded
    checkpoint with `model.safetensors.index.json`. The tokenizer has
    `vocab_size` entries as long as its corpus yields enough merges (about
    5,000); beyond that the embedding is padded, as many published models are.
    """
    out = Path(out_dir)
    _check_args(architecture, dtype, hidden_size, num_heads, num_kv_heads, sliding_window)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AlreadyExists(f"{out} already exists and is not an empty directory; choose a new path")
    tokenizer = train_tokenizer(vocab_size)

    # Build next to the target and rename into place, so a failed build never
    # leaves a half-written model directory behind.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.building-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        shape = {
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads,
            "intermediate_size": intermediate_size,
            "max_position_embeddings": max_position_embeddings,
        }
        token_ids = {t: tokenizer.token_to_id(t) for t in (BOS_TOKEN, END_OF_TEXT, END_OF_TURN, PAD_TOKEN)}
        config = _model_config(
            architecture,
            shape,
            dtype=dtype,
            tie_word_embeddings=tie_word_embeddings,
            rope_scaling=rope_scaling,
            sliding_window=sliding_window,
            token_ids=token_ids,
        )
        _save_random_model(
            config, staging, architecture=architecture, seed=seed, dtype=dtype, max_shard_size=max_shard_size
        )
        _add_legacy_config_keys(staging / "config.json", rope_scaling)
        save_tokenizer(tokenizer, staging, model_max_length=max_position_embeddings)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_args(
    architecture: str,
    dtype: str,
    hidden_size: int,
    num_heads: int,
    num_kv_heads: int,
    sliding_window: int | None,
) -> None:
    if architecture not in ARCHITECTURES:
        raise InvalidArgument(
            f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    if dtype not in DTYPES:
        raise InvalidArgument(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if hidden_size % num_heads:
        raise InvalidArgument(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if num_heads % num_kv_heads:
        raise InvalidArgument(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if sliding_window is not None and architecture != "mistral":
        raise InvalidArgument("sliding_window is only supported for architecture 'mistral'")


def _model_config(
    architecture: str,
    shape: dict[str, int],
    *,
    dtype: str,
    tie_word_embeddings: bool | None,
    rope_scaling: dict[str, Any] | None,
    sliding_window: int | None,
    token_ids: dict[str, int],
) -> Any:
    """The transformers config; `shape` holds its size fields under their HF names."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    rope_parameters = {
        "rope_type": "default",
        **(rope_scaling or {}),
        "rope_theta": _ROPE_THETA[architecture],
    }
    tied = _TIED_BY_DEFAULT[architecture] if tie_word_embeddings is None else tie_word_embeddings
    common: dict[str, Any] = {
        **shape,
        "rms_norm_eps": 1e-5,
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": tied,
        "bos_token_id": token_ids[BOS_TOKEN],
        "eos_token_id": [token_ids[END_OF_TEXT], token_ids[END_OF_TURN]],
        "pad_token_id": token_ids[PAD_TOKEN],
        "dtype": dtype,
    }
    if architecture == "llama":
        return LlamaConfig(**common)
    if architecture == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    return MistralConfig(**common, sliding_window=sliding_window)


def _save_random_model(
    config: Any, out: Path, *, architecture: str, seed: int, dtype: str, max_shard_size: int | str
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    # Allocate on the meta device and fill each tensor once: skips HF's own
    # init, which matters when bench/ builds full-size shapes with this code.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model = model.to(getattr(torch, dtype)).to_empty(device="cpu")
    model.tie_weights()
    # The family joins the seed so that llama and mistral, which share
    # parameter names and shapes, do not get the same weights.
    generator = torch.Generator().manual_seed(zlib.crc32(f"{architecture}:{seed}".encode()))
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Drawn in float32 and cast, so lower-precision builds are the
            # float32 build rounded.
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if name.endswith("norm.weight"):
                value = 1.0 + _NORM_WEIGHT_STD * noise
            elif name.endswith(".bias"):
                value = _BIAS_STD * noise
            else:
                value = noise * param.shape[-1] ** -0.5
            param.copy_(value)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out, max_shard_size=max_shard_size)


def _add_legacy_config_keys(config_path: Path, rope_scaling: dict[str, Any] | None) -> None:
    """Also write `rope_theta`, `rope_scaling` and `torch_dtype` at the top level.

    transformers 5 nests rope settings in `rope_parameters` and renamed
    `torch_dtype`; published checkpoints and readers pinned to transformers 4
    use the top-level keys. Writing both keeps the directory readable by either.
    """
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["rope_theta"] = config["rope_parameters"]["rope_theta"]
    config["rope_scaling"] = rope_scaling
    config["torch_dtype"] = config["dtype"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
