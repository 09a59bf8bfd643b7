"""Spec validation: defaults, and a clear INVALID_ARGUMENT naming the field for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from quant_harness import spec

from cairn.common.errors import InvalidArgument
from cairn.services.quantizer.plan import Method, check_model, plan_from_spec, source_name
from cairn.services.quantizer.quantize import quantize
from cairn.services.worker.models import ModelConfig

CALIB = {"calibration": {"dataset_uri": "calib.jsonl"}}


def _quantize(plan, model: Path, tmp_path: Path) -> None:
    quantize(
        plan,
        model,
        tmp_path / "out",
        fetch=Path,
        device=torch.device("cpu"),
        report=lambda *_: None,
        lineage={},
    )


def test_defaults_of_each_method() -> None:
    int4 = plan_from_spec(spec("acme/llama@3", "weight_only_int4"))
    assert (int4.bits, int4.group_size, int4.symmetric, int4.dtype) == (4, 128, True, "bfloat16")
    assert int4.output_name == "acme-llama-w4a16" and int4.ignore == ("lm_head",)
    assert plan_from_spec(spec("m", "weight_only_int8")).group_size is None
    gptq = plan_from_spec(spec("m", "gptq", **CALIB))
    assert (gptq.bits, gptq.group_size, gptq.damp_percent, gptq.act_order) == (4, 128, 0.01, False)
    assert gptq.calibration.num_samples == 128 and gptq.calibration.seq_len == 512
    assert gptq.eval.num_samples == 32
    smooth = plan_from_spec(spec("m", "smooth_quant", **CALIB))
    assert (smooth.bits, smooth.group_size, smooth.alpha) == (8, None, 0.8)
    fp8 = plan_from_spec(spec("m", "fp8", dtype="fp16", kv_cache={"dtype": "fp8"}))
    assert fp8.dtype == "float16" and fp8.kv_cache.dtype == "fp8" and not fp8.kv_cache.static_scales
    assert fp8.output_name == "m-fp8-kv-fp8" and not fp8.needs_calibration
    kv = plan_from_spec(
        spec("m", "kv_cache_only", kv_cache={"dtype": "int8", "static_scales": True}, **CALIB)
    )
    assert kv.method == Method.KV_CACHE_ONLY and kv.needs_calibration and kv.output_name == "m-kv-int8"


def test_options_are_kept() -> None:
    plan = plan_from_spec(
        spec(
            "m", "gptq", bits=8, group_size=-1, act_order=True, damp_percent=0.05, symmetric=False,
            output_name="acme/out", aliases=["staging"], ignore=["re:.*down_proj"],
            calibration={"token_ids_uri": "ids.txt", "num_samples": 16, "seq_len": 256},
        )
    )  # fmt: skip
    assert (plan.bits, plan.group_size, plan.act_order, plan.damp_percent, plan.symmetric) == (
        8,
        None,
        True,
        0.05,
        False,
    )
    assert plan.output_name == "acme/out" and plan.aliases == ("staging",)
    assert plan.ignore == ("lm_head", "re:.*down_proj")
    assert plan.calibration.token_ids_uri == "ids.txt" and plan.calibration.seq_len == 256
    assert plan.parameters()["method"] == "gptq" and plan.parameters()["act_order"] is True


@pytest.mark.parametrize(
    ("quant_type", "fields", "message"),
    [
        ("unspecified", {}, "quant_type is required"),
        ("gptq", {}, "gptq needs calibration data"),
        ("awq", {}, "awq needs calibration data"),
        ("smooth_quant", {}, "smooth_quant needs calibration data"),
        (
            "fp8",
            {"kv_cache": {"dtype": "int8", "static_scales": True}},
            "static KV-cache scales needs calibration",
        ),
        ("gptq", {"bits": 3, **CALIB}, "bits must be 4 or 8"),
        ("awq", {"bits": 8, **CALIB}, "awq quantizes to 4 bits"),
        ("fp8", {"group_size": 64}, "per-channel weight scales"),
        ("smooth_quant", {"symmetric": False, **CALIB}, "symmetric=false applies"),
        ("weight_only_int4", {"act_order": True}, "act_order applies to gptq only"),
        ("weight_only_int4", {"smoothquant_alpha": 0.5}, "smoothquant_alpha applies to smooth_quant only"),
        ("smooth_quant", {"smoothquant_alpha": 1.5, **CALIB}, "smoothquant_alpha must be in [0, 1]"),
        ("gptq", {"damp_percent": 0.0, **CALIB}, "damp_percent must be in (0, 1]"),
        ("weight_only_int4", {"group_size": -7}, "group_size must be positive"),
        ("weight_only_int4", {"dtype": "fp32"}, "dtype 'fp32' is not one of bf16, fp16"),
        ("kv_cache_only", {}, "kv_cache_only needs kv_cache.dtype"),
        ("fp8", {"kv_cache": {"dtype": "int4"}}, "kv_cache.dtype 'int4' is not one of"),
        ("gptq", {"calibration": {"dataset_uri": "a", "token_ids_uri": "b"}}, "not both"),
        ("weight_only_int8", {"eval": {"seq_len": 1}}, "eval.seq_len must be in"),
        ("weight_only_int8", {"output_name": "bad name!"}, "output_name 'bad name!' is malformed"),
        ("weight_only_int8", {"aliases": ["latest"]}, "reserved"),
    ],
)
def test_bad_specs_are_rejected_with_the_reason(quant_type: str, fields: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace("[", r"\[")):
        plan_from_spec(spec("m", quant_type, **fields))


def test_unknown_quant_type_and_empty_source() -> None:
    from cairn.v1 import quantizer_pb2

    with pytest.raises(InvalidArgument, match="unknown quant_type 42"):
        plan_from_spec(quantizer_pb2.QuantizeJobSpec(source={"ref": "m"}, quant_type=42))
    with pytest.raises(InvalidArgument, match="source is empty"):
        plan_from_spec(spec(" ", "fp8"))


def test_group_size_must_divide_every_quantized_input(source: Path) -> None:
    config = ModelConfig.from_dir(source)
    check_model(plan_from_spec(spec("m", "weight_only_int4", group_size=32)), config)
    with pytest.raises(InvalidArgument, match="group_size 128 does not divide hidden_size"):
        check_model(plan_from_spec(spec("m", "weight_only_int4")), config)
    with pytest.raises(InvalidArgument, match="group_size 48 does not divide"):
        check_model(plan_from_spec(spec("m", "weight_only_int4", group_size=48)), config)


def test_source_names() -> None:
    assert source_name("acme/llama@production") == "acme-llama"
    assert source_name("/models/Llama-3.1-8B") == "Llama-3.1-8B"


def test_unsupported_architecture_fails_before_any_work(source: Path, tmp_path: Path) -> None:
    model = tmp_path / "gpt2"
    shutil.copytree(source, model)
    config = json.loads((model / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (model / "config.json").write_text(json.dumps(config))
    plan = plan_from_spec(spec(str(model), "weight_only_int8"))
    with pytest.raises(InvalidArgument, match="unsupported architecture GPT2LMHeadModel"):
        _quantize(plan, model, tmp_path)
    assert not (tmp_path / "out").exists()


def test_partial_ignore_of_fused_layers_is_refused(
    source: Path, calibration_file: Path, tmp_path: Path
) -> None:
    plan = plan_from_spec(spec(str(source), "weight_only_int8", ignore=["k_proj"]))
    with pytest.raises(InvalidArgument, match="the worker fuses them"):
        _quantize(plan, source, tmp_path)


def test_too_little_calibration_data(source: Path, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 3 4 5\n6 7 8\n")
    plan = plan_from_spec(spec(str(source), "gptq", group_size=32, calibration={"token_ids_uri": str(ids)}))
    with pytest.raises(InvalidArgument, match="has 8 tokens, fewer than one sample of seq_len 512"):
        _quantize(plan, source, tmp_path)
