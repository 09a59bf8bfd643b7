"""Spec validation and defaults, and the YAML job file: every refusal names the field to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from cairn.common.errors import InvalidArgument
from cairn.services.trainer.jobfile import load_job_file, spec_from_yaml
from cairn.services.trainer.plan import DatasetFormat, Method, TrainPlan, plan_from_spec

BASE = {"base_model": "tiny@1", "dataset": {"uri": "d.jsonl"}}


def plan(**fields: object) -> TrainPlan:
    return plan_from_spec(spec_from_yaml({**BASE, **fields}))


def test_defaults_follow_the_method() -> None:
    lora = plan(method="lora")
    assert lora.method == Method.LORA and lora.adapter == "lora"
    assert (lora.lora.r, lora.lora.alpha, lora.lora.dropout, lora.lora.target_modules) == (8, 16.0, 0.0, ())  # type: ignore[union-attr]
    assert (lora.learning_rate, lora.lr_scheduler, lora.warmup_ratio, lora.num_epochs) == (
        1e-4,
        "cosine",
        0.03,
        1.0,
    )
    assert (lora.micro_batch_size, lora.gradient_accumulation_steps, lora.max_length, lora.seed) == (
        1,
        1,
        2048,
        42,
    )
    assert (lora.logging_steps, lora.max_grad_norm, lora.num_workers, lora.zero_stage) == (10, 1.0, 1, 0)
    assert lora.output_name == "tiny-lora" and lora.dataset.format == DatasetFormat.AUTO
    sft = plan(method="sft", args={"max_grad_norm": 0})
    assert (sft.adapter, sft.learning_rate, sft.max_grad_norm, sft.lora) == (None, 2e-5, 0.0, None)
    prefix = plan(method="prefix-tuning", prefix={"num_virtual_tokens": 4})
    assert (prefix.adapter, prefix.prefix_tokens) == ("prefix", 4)
    dpo = plan(
        method="dpo", lora={"r": 4, "target_modules": ["all-linear"]}, dpo={"reference_model": "ref@2"}
    )
    assert (dpo.adapter, dpo.dpo_beta, dpo.dpo_reference, dpo.lora.target_modules) == (  # type: ignore[union-attr]
        "lora", 0.1, "ref@2", ("all-linear",)
    )  # fmt: skip
    assert plan(method="dpo").adapter is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"base_model": None}, "base_model: required"),
        ({"base_model": "bad name!"}, "malformed model name"),
        ({}, "method: required"),
        ({"method": "sft", "dataset": {"uri": ""}}, "dataset.uri: required"),
        (
            {"method": "sft", "dataset": {"uri": "d", "eval_split": 0.7}},
            "dataset.eval_split: must be in [0, 0.5]",
        ),
        ({"method": "sft", "dataset": {"uri": "d", "eval_split": 0.1, "eval_uri": "e"}}, "either eval_split"),
        ({"method": "sft", "dataset": {"uri": "d", "sha256": "xyz"}}, "dataset.sha256: must be 64"),
        (
            {"method": "sft", "dataset": {"uri": "d", "format": "dpo_pairs"}},
            "which only method dpo trains on",
        ),
        (
            {"method": "dpo", "dataset": {"uri": "d", "format": "messages"}},
            "method dpo needs preference pairs",
        ),
        ({"method": "pretrain", "dataset": {"uri": "d", "format": "alpaca"}}, "reads raw text"),
        ({"method": "sft", "args": {"precision": "fp8"}}, "args.precision: 'fp8' is not one of"),
        ({"method": "sft", "args": {"lr_scheduler": "step"}}, "args.lr_scheduler"),
        ({"method": "sft", "args": {"learning_rate": -1}}, "args.learning_rate: must be > 0"),
        ({"method": "sft", "args": {"warmup_ratio": 1.5}}, "args.warmup_ratio"),
        ({"method": "sft", "args": {"max_length": 4}}, "args.max_length: must be at least 8"),
        ({"method": "sft", "args": {"zero_offload": True}}, "args.zero_offload: needs a DeepSpeed preset"),
        ({"method": "prefix-tuning", "args": {"packing": True}}, "prefix tuning cannot pack"),
        ({"method": "dpo", "args": {"packing": True}}, "packing does not apply"),
        ({"method": "qlora", "args": {"zero_stage": 3}}, "cannot be sharded by ZeRO-3"),
        ({"method": "sft", "lora": {"r": 4}}, "lora: LoRA settings do not apply to method sft"),
        ({"method": "lora", "lora": {"dropout": 1.0}}, "lora.dropout"),
        (
            {"method": "lora", "lora": {"target_modules": ["all-linear", "q_proj"]}},
            '"all-linear" stands alone',
        ),
        ({"method": "lora", "prefix": {"num_virtual_tokens": 3}}, "prefix settings apply to method"),
        ({"method": "sft", "dpo": {"beta": 0.5}}, "DPO settings apply to method dpo only"),
        ({"method": "sft", "output": {"merge_lora": True}}, "output.merge_lora: only LoRA adapters"),
        ({"method": "sft", "output": {"name": "bad name"}}, "output.name 'bad name' is malformed"),
        ({"method": "sft", "output": {"aliases": ["latest"]}}, "reserved for the newest version"),
    ],
)
def test_bad_specs_name_the_field(fields: dict, message: str) -> None:
    spec = {**BASE, **fields}
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(InvalidArgument) as raised:
        plan_from_spec(spec_from_yaml(spec))
    assert message in raised.value.message


def test_job_file_reads_yaml_with_short_enum_names(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "base_model: tiny@base\n"
        "method: Prefix-Tuning\n"
        "dataset: {uri: data.jsonl, format: conversations, eval_split: 0.25}\n"
        "args: {zero_stage: 2, num_workers: 2, max_steps: 7, precision: bf16}\n"
        "prefix: {num_virtual_tokens: 3}\n"
        "output: {name: acme/prefix, aliases: [staging]}\n"
        "runner: ray\n"
        "labels: {team: nlp, ticket: 42}\n"
    )
    spec = load_job_file(path)
    assert spec.runner == 2 and dict(spec.labels) == {"team": "nlp", "ticket": "42"}
    p = plan_from_spec(spec)
    assert (p.method, p.dataset.format, p.dataset.eval_split) == (
        Method.PREFIX_TUNING,
        DatasetFormat.CONVERSATIONS,
        0.25,
    )
    assert (p.zero_stage, p.num_workers, p.max_steps, p.precision, p.prefix_tokens) == (2, 2, 7, "bf16", 3)
    assert (p.output_name, p.aliases, p.base_model) == ("acme/prefix", ("staging",), "tiny@base")
    assert (
        plan_from_spec(spec_from_yaml({**BASE, "method": "sft", "args": {"zero_stage": "zero-3"}})).zero_stage
        == 3
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "expected a mapping of TrainJobSpec fields, got list"),
        (
            "method: lora\nargs: {lerning_rate: 1}\n",
            "unknown key 'args.lerning_rate'; known keys here: learning_rate",
        ),
        (
            "method: finetune\n",
            "method 'finetune' is not one of sft, lora, qlora, prefix-tuning, dpo, pretrain",
        ),
        ("args: {zero_stage: 1}\n", "args.zero_stage 1 is not one of none, 2, 3"),
        ("args: {max_steps: many}\n", "max_steps"),
        ("output: {aliases: staging}\n", "output.aliases must be a list"),
        ("dataset: uri.jsonl\n", "dataset must be a mapping of DatasetSpec fields"),
        ("method: [lora\n", "not valid YAML"),
    ],
)
def test_job_file_errors_are_actionable(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgument) as raised:
        load_job_file(path)
    assert message in raised.value.message and str(path) in raised.value.message
    with pytest.raises(InvalidArgument, match="cannot read it"):
        load_job_file(tmp_path / "missing.yaml")
