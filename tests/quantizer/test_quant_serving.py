"""The worker serves every quantized format on the CPU (torch references) like its dequantized twin.

Each artifact is compared with the plain fp32 model its stored codes
dequantize to (decompressed by the compressed-tensors library, or written
alongside a community checkpoint): logits at every position, with prefill
chunks and decode steps mixed in one batch. Weight-only formats compute with
exactly those weights, so they must match to float rounding; W8A8 and a
quantized KV cache add activation/KV rounding, bounded relative to the logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from quant_harness import (
    CALIBRATION,
    EVALUATION,
    community_checkpoint,
    dequantized_twin,
    make_runner,
    prompts,
    spec,
    teacher_forced_logits,
)

from cairn.common.errors import InvalidArgument
from cairn.services.worker.kv_cache import block_bytes
from cairn.services.worker.quantization import W8A8Linear, WeightOnlyLinear

# name -> (quant_type, spec fields, relative logit tolerance)
ARTIFACTS = {
    "w8a16": ("weight_only_int8", {}, 1e-5),
    "w4a16": ("weight_only_int4", {"group_size": 32}, 1e-5),
    "w4a16-asym": ("weight_only_int4", {"group_size": 32, "symmetric": False}, 1e-5),
    "gptq-act-order": ("gptq", {"group_size": 32, "act_order": True}, 1e-5),
    "awq": ("awq", {"group_size": 32}, 1e-5),
    # Measured: 0.04, 0.10, 0.03 and 0.12 of the largest logit.
    "w8a8-int8": ("smooth_quant", {}, 0.08),
    "fp8": ("fp8", {}, 0.2),
    "kv-int8-static": ("kv_cache_only", {"kv_cache": {"dtype": "int8", "static_scales": True}}, 0.06),
    "fp8-kv-fp8": ("fp8", {"kv_cache": {"dtype": "fp8"}}, 0.25),
}


def _close(ours: torch.Tensor, expected: torch.Tensor, relative: float) -> None:
    scale = expected.abs().max()
    error = (ours - expected).abs().max()
    assert error <= relative * scale + 1e-4, f"max logit error {float(error):.4g} vs scale {float(scale):.4g}"


@pytest.fixture(scope="module")
def vocab(source: Path) -> int:
    return json.loads((source / "config.json").read_text())["vocab_size"]


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_quantized_artifact_serves_like_its_dequantized_twin(name, artifact, vocab, tmp_path) -> None:
    quant_type, fields, tolerance = ARTIFACTS[name]
    out = artifact(quant_type, **fields).directory
    twin = dequantized_twin(out, tmp_path / "dense")
    batch = prompts(vocab, count=3, length=11, seed=1)
    quantized = make_runner(out)
    logits = teacher_forced_logits(quantized, batch, split=6)
    expected = teacher_forced_logits(make_runner(twin), batch, split=6)
    assert logits.shape == expected.shape and torch.isfinite(logits).all()
    _close(logits, expected, tolerance)
    if tolerance < 1e-3:
        assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    layers = [m for m in quantized.model.modules() if isinstance(m, WeightOnlyLinear | W8A8Linear)]
    # qkv, o, gate_up and down of each decoder layer; never the LM head.
    assert len(layers) == (0 if quant_type == "kv_cache_only" else 4 * quantized.model_config.num_layers)
    assert (quantized.kv_quant is not None) == ("kv_cache" in fields)


@pytest.mark.parametrize(
    ("layout", "act_order"),
    [("gptq", True), ("gptq_v2", False), ("awq", False)],
    ids=["gptq-v1-act-order", "gptq-v2", "awq"],
)
def test_community_checkpoints_serve_like_their_dequantized_weights(
    source, vocab, tmp_path, layout, act_order
):
    checkpoint, dense = community_checkpoint(
        source, tmp_path / layout, tmp_path / "dense", layout, group_size=32, act_order=act_order
    )
    batch = prompts(vocab, count=2, length=9, seed=2)
    runner = make_runner(checkpoint)
    assert runner.quantization.weights.checkpoint_format == layout
    _close(teacher_forced_logits(runner, batch, 5), teacher_forced_logits(make_runner(dense), batch, 5), 1e-5)


def test_dense_model_with_an_int8_kv_cache(source, vocab) -> None:
    batch = prompts(vocab, count=2, length=10, seed=3)
    runner = make_runner(source, kv_cache_dtype="int8")
    assert runner.kv_quant.dynamic and runner.kv_cache.storage.dtype == torch.int8
    _close(
        teacher_forced_logits(runner, batch, 4), teacher_forced_logits(make_runner(source), batch, 4), 0.05
    )


def test_kv_cache_bytes_per_block() -> None:
    from cairn.services.worker.models import ModelConfig
    from cairn.services.worker.quantization import KVCacheQuant

    config = ModelConfig.from_hf(
        {"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 4096, "intermediate_size": 8,
         "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8}
    )  # fmt: skip
    bf16 = block_bytes(config, 16, torch.bfloat16)
    dynamic = block_bytes(config, 16, torch.bfloat16, KVCacheQuant(torch.int8, None))
    static = block_bytes(
        config, 16, torch.bfloat16, KVCacheQuant(torch.float8_e4m3fn, [(torch.ones(1),) * 2] * 32)
    )
    assert static * 2 == bf16
    assert dynamic == static + 2 * 32 * 16 * 8 * 4  # one fp32 scale per token, kv head, K and V


@pytest.mark.parametrize("quantization", ["w8a16", "w4a16", "w8a8_int8", "w8a8_fp8"])
def test_random_weights_of_each_quantization(tiny_model_factory, vocab, quantization) -> None:
    # Random W4A16 weights come in groups of 128, which the default tiny model's 64 inputs cannot hold.
    model = tiny_model_factory(hidden_size=128, intermediate_size=256)
    runner = make_runner(model, load_format="dummy", quantization=quantization, kv_cache_dtype="fp8")
    assert runner.quantization.name == quantization
    logits = teacher_forced_logits(runner, prompts(vocab, count=1, length=6), 3)
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_engine_quantization_must_match_the_checkpoint(artifact, source) -> None:
    w4a16 = artifact("weight_only_int4", group_size=32).directory
    assert make_runner(w4a16, quantization="w4a16").quantization.name == "w4a16"
    with pytest.raises(InvalidArgument, match="asked for but the checkpoint is w4a16"):
        make_runner(w4a16, quantization="w8a8_fp8")
    with pytest.raises(InvalidArgument, match=r"the checkpoint is quantized \(w4a16\)"):
        make_runner(w4a16, quantization="none")
    with pytest.raises(InvalidArgument, match="needs a quantized checkpoint"):
        make_runner(source, quantization="w4a16")
    with pytest.raises(InvalidArgument, match="quantization must be one of"):
        make_runner(source, quantization="int3")


def test_unsupported_checkpoint_quantizations_are_refused(source, tmp_path) -> None:
    from quant_harness import read_tensors, write_model

    tensors = read_tensors(source)
    for config, message in [
        ({"quant_method": "bitsandbytes"}, "'bitsandbytes' is not supported"),
        ({"quant_method": "gptq", "bits": 3}, "GPTQ with 3-bit weights"),
        ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "AWQ gemv"),
        ({"quant_method": "compressed-tensors", "config_groups": {"g": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}}},
          "format": "nvfp4-pack-quantized"}, "strategy 'tensor_group' is not supported"),
    ]:  # fmt: skip
        model = write_model(tmp_path / "model", source, tensors, config)
        with pytest.raises(InvalidArgument, match=message):
            make_runner(model)


def test_incomplete_quantized_checkpoint(artifact, tmp_path) -> None:
    from quant_harness import read_tensors, write_model

    out = artifact("weight_only_int4", group_size=32).directory
    tensors = read_tensors(out)
    del tensors["model.layers.1.mlp.down_proj.weight_scale"]
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    broken = write_model(tmp_path / "broken", out, tensors, config)
    with pytest.raises(
        InvalidArgument, match=r"model.layers.1.mlp.down_proj is incomplete: it lacks \['weight_scale'\]"
    ):
        make_runner(broken)


@pytest.mark.parametrize("quant_type", ["awq", "smooth_quant"])
def test_qwen2_with_qkv_bias_and_tied_embeddings(tiny_model_factory, calibration_file, tmp_path, quant_type):
    """Smoothing scales fold into norms and biased projections; the tied head stays the embedding."""
    from cairn.services.quantizer.plan import plan_from_spec
    from cairn.services.quantizer.quantize import quantize

    source = tiny_model_factory(arch="qwen2")
    fields = {"calibration": {"dataset_uri": str(calibration_file), **CALIBRATION}, "eval": EVALUATION}
    plan = plan_from_spec(
        spec(str(source), quant_type, group_size=32 if quant_type == "awq" else 0, **fields)
    )
    cpu = torch.device("cpu")
    out = quantize(
        plan, source, tmp_path / "out", fetch=Path, device=cpu, report=lambda *_: None, lineage={}
    ).directory
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    batch = prompts(vocab, count=2, length=9, seed=4)
    runner = make_runner(out)
    assert runner.model.lm_head.weight is runner.model.model.embed_tokens.weight
    expected = teacher_forced_logits(make_runner(dequantized_twin(out, tmp_path / "dense")), batch, 5)
    _close(teacher_forced_logits(runner, batch, 5), expected, 1e-5 if quant_type == "awq" else 0.08)
