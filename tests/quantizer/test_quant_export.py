"""Artifacts are compressed-tensors checkpoints that the library (and transformers through it) reads back
to exactly the weights our own dequantization gives; config, recipe and sizes are what they claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from quant_harness import decompressed, read_tensors

from cairn.services.quantizer.export import compressed_tensors, quantization_config
from cairn.services.quantizer.methods.rtn import QuantArgs, rtn
from cairn.services.quantizer.pipeline import QuantizedModel
from cairn.services.quantizer.plan import plan_from_spec
from cairn.services.worker.quantization import checkpoint_quantization

# name -> (quant_type, spec fields, compressed-tensors format)
SCHEMES = {
    "w8a16": ("weight_only_int8", {}, "pack-quantized"),
    "w4a16": ("weight_only_int4", {"group_size": 32}, "pack-quantized"),
    "w4a16-asym": ("weight_only_int4", {"group_size": 32, "symmetric": False}, "pack-quantized"),
    "w8a8-int8": ("smooth_quant", {"calibration": {"dataset_uri": "x"}}, "int-quantized"),
    "fp8": ("fp8", {}, "float-quantized"),
}


@pytest.mark.parametrize("name", list(SCHEMES))
def test_library_decompresses_our_codes_to_our_dequantized_weights(name: str) -> None:
    from quant_harness import spec

    quant_type, fields, fmt = SCHEMES[name]
    plan = plan_from_spec(spec("m", quant_type, **fields))
    args = QuantArgs(plan.bits, plan.group_size, plan.symmetric, fp8=quant_type == "fp8")
    weights = {
        f"model.layers.0.mlp.{n}": rtn(torch.randn(48, 64) * 0.1, args, torch.bfloat16)
        for n in ("up_proj", "down_proj")
    }
    names = [f"{module}.weight" for module in weights]
    config = quantization_config(plan, ["lm_head"])
    tensors = compressed_tensors(QuantizedModel(weights=weights), plan, names, config)
    scheme = config.config_groups["group_0"]
    assert scheme.format == fmt
    from compressed_tensors.compressors import BaseCompressor

    compressor = BaseCompressor.get_value_from_registry(fmt)
    for module, weight in weights.items():
        state = {p: tensors[f"{module}.{p}"] for p in compressor.compression_param_names(scheme)}
        library = compressor.decompress(state, scheme)["weight"]
        # The library multiplies in the scales' dtype (bf16): one rounding of the exact product.
        assert library.dtype == torch.bfloat16
        assert torch.equal(library, weight.dequantize().to(torch.bfloat16))
        state["weight_scale"] = state["weight_scale"].float()
        assert torch.equal(compressor.decompress(state, scheme)["weight"], weight.dequantize())


# Symmetric only: transformers 5.23 with compressed-tensors 0.20 sizes a pack-quantized model's zero
# points unpacked while the library's compressor (and vLLM) store them packed, so transformers cannot
# open any asymmetric pack-quantized checkpoint; the library itself reads ours (test above, serving).
ARTIFACTS = {
    "w4a16-gptq": ("gptq", {"group_size": 32}),
    "w4a16-awq": ("awq", {"group_size": 32}),
    "w8a8-int8-kv-int8": ("smooth_quant", {"kv_cache": {"dtype": "int8", "static_scales": True}}),
    "fp8": ("fp8", {}),
}


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_artifact_config_and_transformers_loading(artifact, source: Path, name: str) -> None:
    from transformers import AutoModelForCausalLM

    quant_type, fields = ARTIFACTS[name]
    outcome = artifact(quant_type, **fields)
    out = outcome.directory
    config = json.loads((out / "config.json").read_text())
    declared = config["quantization_config"]
    assert (
        declared["quant_method"] == "compressed-tensors" and declared["quantization_status"] == "compressed"
    )
    assert declared["ignore"] == ["lm_head"] and config["torch_dtype"] == "bfloat16"
    served = checkpoint_quantization(config)
    assert (
        served.weights.name
        == {"gptq": "w4a16", "awq": "w4a16", "smooth_quant": "w8a8_int8", "fp8": "w8a8_fp8"}[quant_type]
    )
    assert (served.kv_cache is not None) == ("kv_cache" in fields)
    for file in ("tokenizer.json", "tokenizer_config.json", "quantization_recipe.json"):
        assert (out / file).is_file()
    tensors = read_tensors(out)
    if "kv_cache" in fields:
        assert tensors["model.layers.1.self_attn.k_scale"].item() > 0
    assert "lm_head.weight" in tensors and tensors["lm_head.weight"].dtype == torch.bfloat16
    # transformers opens it through its compressed-tensors integration, runs it (its first forward
    # decompresses every layer) and holds the same weights.
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()
    ours = decompressed(out, scale_dtype=None)
    for module in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        hf_weight = model.get_submodule(module).weight.detach()
        assert torch.equal(hf_weight.to(ours[f"{module}.weight"].dtype), ours[f"{module}.weight"])


def test_report_sizes_and_recipe(artifact, source: Path, calibration_file: Path) -> None:
    outcome = artifact("gptq", group_size=32)
    evaluation = outcome.evaluation
    # fp32 source -> int4 linears, bf16 embeddings and norms.
    assert evaluation.size_bytes_after < evaluation.size_bytes_before / 2
    assert (
        evaluation.eval_tokens == 4 * 63
        and evaluation.perplexity_before > 1
        and evaluation.perplexity_after > 1
    )
    recipe = json.loads((outcome.directory / "quantization_recipe.json").read_text())
    assert recipe["method"] == "gptq" and recipe["scheme"] == "w4a16-gptq"
    assert recipe["parameters"]["group_size"] == 32 and recipe["parameters"]["bits"] == 4
    assert recipe["calibration"]["samples"] == 8 and recipe["calibration"]["seq_len"] == 64
    import hashlib

    assert recipe["calibration"]["sha256"] == hashlib.sha256(calibration_file.read_bytes()).hexdigest()
    assert recipe["evaluation"]["perplexity_after"] == evaluation.perplexity_after


def test_quantization_keeps_perplexity_close(artifact) -> None:
    for quant_type, fields in (("weight_only_int8", {}), ("gptq", {"group_size": 32})):
        evaluation = artifact(quant_type, **fields).evaluation
        assert abs(evaluation.perplexity_after / evaluation.perplexity_before - 1) < 0.05
