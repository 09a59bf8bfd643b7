"""The quantized model as a compressed-tensors checkpoint: what vLLM, llm-compressor and cairn's worker load.

The quantization config and every quantized layer's tensors come from the
`compressed-tensors` library itself: our codes are handed to its compressor
as the weights they dequantize to (exact in fp32, since the scales are
already in the artifact dtype), and it re-derives and packs the same codes
(`weight_packed` + `weight_scale` [+ `weight_zero_point`] for weight-only
INT4/INT8, `weight` codes + `weight_scale` for W8A8 INT8/FP8). Static KV
scales go in as each attention layer's `k_scale` / `v_scale`. The rest of
the source checkpoint is written in the artifact dtype under its own names,
with the tokenizer and generation files copied alongside.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from cairn.services.quantizer.pipeline import QuantizedModel
from cairn.services.quantizer.plan import Method, QuantPlan

MAX_SHARD_BYTES = 5 * 2**30
RECIPE_FILE = "quantization_recipe.json"
# Source files the artifact replaces (weights, their index, config) or must not carry over.
_NOT_COPIED = ("config.json", "model.safetensors.index.json", ".cairn-version.json")
_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def quantization_config(plan: QuantPlan, unquantized: list[str]) -> Any:
    """The compressed-tensors `QuantizationConfig` of the plan (status: compressed)."""
    from compressed_tensors import CompressionFormat
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    groups: dict[str, QuantizationScheme] = {}
    fmt = CompressionFormat.dense
    if plan.method != Method.KV_CACHE_ONLY:
        kind = "float" if plan.method == Method.FP8 else "int"
        weights = QuantizationArgs(
            num_bits=plan.bits,
            type=kind,
            symmetric=plan.symmetric,
            strategy="group" if plan.group_size else "channel",
            group_size=plan.group_size,
            actorder="weight" if plan.act_order else None,
        )
        activations = None
        if plan.method in (Method.SMOOTH_QUANT, Method.FP8):
            activations = QuantizationArgs(
                num_bits=8, type=kind, strategy="token", dynamic=True, symmetric=True
            )
        fmt = {
            Method.SMOOTH_QUANT: CompressionFormat.int_quantized,
            Method.FP8: CompressionFormat.float_quantized,
        }.get(plan.method, CompressionFormat.pack_quantized)
        groups["group_0"] = QuantizationScheme(
            targets=["Linear"], weights=weights, input_activations=activations, format=fmt.value
        )
    kv_scheme = None
    if plan.kv_cache is not None:
        static = plan.kv_cache.static_scales
        kv_scheme = QuantizationArgs(
            num_bits=8,
            type="float" if plan.kv_cache.dtype == "fp8" else "int",
            strategy="tensor" if static else "token",
            dynamic=not static,
            symmetric=True,
        )
    return QuantizationConfig(
        config_groups=groups,
        kv_cache_scheme=kv_scheme,
        format=fmt.value,
        quantization_status="compressed",
        ignore=unquantized,
    )


def compressed_tensors(
    quantized: QuantizedModel, plan: QuantPlan, source_names: list[str], config: Any
) -> dict[str, torch.Tensor]:
    """Every tensor of the artifact by checkpoint name, in the source checkpoint's order."""
    from compressed_tensors.compressors import BaseCompressor

    dtype = getattr(torch, plan.dtype)
    tensors: dict[str, torch.Tensor] = {}
    covered = {f"{module}.weight" for module in quantized.weights}
    for name in source_names:
        if name in covered:
            module = name.removesuffix(".weight")
            weight = quantized.weights[module]
            scheme = config.config_groups["group_0"]
            compressor = BaseCompressor.get_value_from_registry(scheme.format)
            state = {"weight": weight.dequantize(), "weight_scale": weight.scale}
            if weight.zero_point is not None:
                state["weight_zero_point"] = weight.zero_point
            for suffix, tensor in compressor.compress(state, scheme).items():
                tensors[f"{module}.{suffix}"] = tensor.contiguous()
        elif name in quantized.tensors:
            tensors[name] = quantized.tensors[name].to(dtype).contiguous()
    for layer, (k_scale, v_scale) in enumerate(quantized.kv_scales or ()):
        tensors[f"model.layers.{layer}.self_attn.k_scale"] = torch.tensor([k_scale], dtype=torch.float32)
        tensors[f"model.layers.{layer}.self_attn.v_scale"] = torch.tensor([v_scale], dtype=torch.float32)
    return tensors


def write_artifact(
    out_dir: Path,
    source_dir: Path,
    plan: QuantPlan,
    quantized: QuantizedModel,
    source_names: list[str],
    unquantized: list[str],
    recipe: dict[str, Any],
) -> Path:
    """Write the compressed-tensors model directory `out_dir` (replacing what was there)."""
    from compressed_tensors.compressors import ModelCompressor

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    config = quantization_config(plan, unquantized)
    _save_sharded(compressed_tensors(quantized, plan, source_names, config), out_dir)
    hf_config = json.loads((source_dir / "config.json").read_text())
    hf_config.pop("quantization_config", None)
    hf_config["torch_dtype"] = hf_config["dtype"] = plan.dtype
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    ModelCompressor(quantization_config=config).update_config(str(out_dir))
    for path in source_dir.iterdir():
        if path.is_file() and path.name not in _NOT_COPIED and not path.name.endswith(_NOT_COPIED_SUFFIXES):
            shutil.copy2(path, out_dir / path.name)
    write_recipe(out_dir, recipe)
    return out_dir


def write_recipe(out_dir: Path, recipe: dict[str, Any]) -> None:
    """How the artifact was made (and, once measured, how it evaluates), next to its weights."""
    (out_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True))


def _save_sharded(tensors: dict[str, torch.Tensor], out_dir: Path) -> None:
    """One model.safetensors, or HF-style shards with an index when over MAX_SHARD_BYTES."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        if shards[-1] and size + tensor.nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], out_dir / "model.safetensors", metadata=metadata)
        return
    weight_map = {}
    for index, shard in enumerate(shards, 1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out_dir / file, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
