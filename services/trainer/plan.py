"""A TrainJobSpec, checked and with every default filled in: what the trainer actually runs.

The service calls `plan_from_spec` at submission, so a bad spec is refused
with INVALID_ARGUMENT naming the field, and the runner calls it again to run
exactly what was checked. Errors name fields the way the YAML job file does
(`args.learning_rate`).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from cairn.common.errors import InvalidArgument
from cairn.services.registry.refs import check_alias_name, check_model_name, parse_ref
from cairn.v1 import trainer_pb2

LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
PRECISIONS = ("bf16", "fp16", "fp32")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Method(enum.Enum):
    SFT = "sft"
    LORA = "lora"
    QLORA = "qlora"
    PREFIX_TUNING = "prefix-tuning"
    DPO = "dpo"
    PRETRAIN = "pretrain"


class DatasetFormat(enum.Enum):
    AUTO = "auto"
    SRC_TGT = "src_tgt"
    CONVERSATIONS = "conversations"
    ALPACA = "alpaca"
    MESSAGES = "messages"
    DPO_SRC_TGT = "dpo_src_tgt"
    DPO_PAIRS = "dpo_pairs"
    TEXT = "text"

    @property
    def is_preference(self) -> bool:
        return self in (DatasetFormat.DPO_SRC_TGT, DatasetFormat.DPO_PAIRS)


_METHODS = {
    trainer_pb2.TRAIN_METHOD_SFT: Method.SFT,
    trainer_pb2.TRAIN_METHOD_LORA: Method.LORA,
    trainer_pb2.TRAIN_METHOD_QLORA: Method.QLORA,
    trainer_pb2.TRAIN_METHOD_PREFIX_TUNING: Method.PREFIX_TUNING,
    trainer_pb2.TRAIN_METHOD_DPO: Method.DPO,
    trainer_pb2.TRAIN_METHOD_PRETRAIN: Method.PRETRAIN,
}
_FORMATS = {
    trainer_pb2.DATASET_FORMAT_AUTO: DatasetFormat.AUTO,
    trainer_pb2.DATASET_FORMAT_SRC_TGT: DatasetFormat.SRC_TGT,
    trainer_pb2.DATASET_FORMAT_CONVERSATIONS: DatasetFormat.CONVERSATIONS,
    trainer_pb2.DATASET_FORMAT_ALPACA: DatasetFormat.ALPACA,
    trainer_pb2.DATASET_FORMAT_MESSAGES: DatasetFormat.MESSAGES,
    trainer_pb2.DATASET_FORMAT_DPO_SRC_TGT: DatasetFormat.DPO_SRC_TGT,
    trainer_pb2.DATASET_FORMAT_DPO_PAIRS: DatasetFormat.DPO_PAIRS,
    trainer_pb2.DATASET_FORMAT_TEXT: DatasetFormat.TEXT,
}
_ZERO = {trainer_pb2.ZERO_STAGE_NONE: 0, trainer_pb2.ZERO_STAGE_2: 2, trainer_pb2.ZERO_STAGE_3: 3}


@dataclass(frozen=True)
class LoraPlan:
    r: int
    alpha: float
    dropout: float
    # Empty: the architecture's attention and MLP projections.
    target_modules: tuple[str, ...]


@dataclass(frozen=True)
class DatasetPlan:
    uri: str
    format: DatasetFormat
    eval_split: float
    eval_uri: str
    sha256: str


@dataclass(frozen=True)
class TrainPlan:
    base_model: str
    method: Method
    dataset: DatasetPlan
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    num_epochs: float
    max_steps: int
    micro_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    # "" resolves on the device: bf16 on GPU, fp32 on CPU.
    precision: str
    seed: int
    max_length: int
    packing: bool
    eval_steps: int
    save_steps: int
    save_total_limit: int
    logging_steps: int
    weight_decay: float
    max_grad_norm: float
    zero_stage: int
    zero_offload: bool
    num_workers: int
    lora: LoraPlan | None
    prefix_tokens: int
    dpo_beta: float
    dpo_reference: str
    output_name: str
    aliases: tuple[str, ...]
    merge_lora: bool
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def adapter(self) -> str | None:
        """ "lora", "prefix" or None (every weight trains)."""
        if self.lora is not None:
            return "lora"
        return "prefix" if self.method == Method.PREFIX_TUNING else None

    @property
    def is_preference(self) -> bool:
        return self.method == Method.DPO


def _bad(field_name: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{field_name}: {problem}")


def plan_from_spec(spec: trainer_pb2.TrainJobSpec) -> TrainPlan:
    if not spec.base_model.ref:
        raise _bad("base_model", 'required: the registry reference of the model to fine-tune, e.g. "llama@3"')
    base = parse_ref(spec.base_model.ref)
    method = _METHODS.get(spec.method)
    if method is None:
        names = ", ".join(m.value for m in Method)
        raise _bad("method", f"required; one of {names}")
    dataset = _dataset(spec.dataset, method)
    args = spec.args
    adapter_method = method in (Method.LORA, Method.QLORA, Method.PREFIX_TUNING)
    lora = _lora(spec, method)

    precision = args.precision.lower()
    if precision and precision not in PRECISIONS:
        raise _bad("args.precision", f"{args.precision!r} is not one of {', '.join(PRECISIONS)}")
    scheduler = args.lr_scheduler or "cosine"
    if scheduler not in LR_SCHEDULERS:
        raise _bad("args.lr_scheduler", f"{scheduler!r} is not one of {', '.join(LR_SCHEDULERS)}")
    if args.learning_rate < 0:
        raise _bad("args.learning_rate", f"must be > 0, got {args.learning_rate}")
    default_lr = 1e-4 if adapter_method or lora is not None else 2e-5
    if not 0 <= args.warmup_ratio < 1:
        raise _bad("args.warmup_ratio", f"must be in [0, 1), got {args.warmup_ratio}")
    if args.num_epochs < 0:
        raise _bad("args.num_epochs", f"must be >= 0, got {args.num_epochs}")
    if args.weight_decay < 0:
        raise _bad("args.weight_decay", f"must be >= 0, got {args.weight_decay}")
    max_grad_norm = args.max_grad_norm if args.HasField("max_grad_norm") else 1.0
    if max_grad_norm < 0:
        raise _bad("args.max_grad_norm", f"must be >= 0 (0 turns clipping off), got {max_grad_norm}")
    max_length = args.max_length or 2048
    if max_length < 8:
        raise _bad("args.max_length", f"must be at least 8 tokens, got {max_length}")
    zero_stage = _ZERO.get(args.zero_stage)
    if zero_stage is None:
        raise _bad("args.zero_stage", f"unknown value {args.zero_stage}")
    if args.zero_offload and not zero_stage:
        raise _bad("args.zero_offload", "needs a DeepSpeed preset: set args.zero_stage to 2 or 3")
    if args.packing and method == Method.PREFIX_TUNING:
        raise _bad(
            "args.packing",
            "prefix tuning cannot pack: its virtual tokens would be shared by every packed sample",
        )
    if args.packing and method == Method.DPO:
        raise _bad("args.packing", "DPO compares whole sequences in pairs; packing does not apply")
    if method == Method.QLORA and zero_stage == 3:
        raise _bad("args.zero_stage", "QLoRA's 4-bit base cannot be sharded by ZeRO-3; use ZeRO-2 or none")

    prefix_tokens = 0
    if method == Method.PREFIX_TUNING:
        prefix_tokens = spec.prefix.num_virtual_tokens or 16
    elif spec.HasField("prefix"):
        raise _bad("prefix", "prefix settings apply to method prefix-tuning only")

    beta, reference = 0.0, ""
    if method == Method.DPO:
        beta = spec.dpo.beta or 0.1
        if beta <= 0:
            raise _bad("dpo.beta", f"must be > 0, got {spec.dpo.beta}")
        if spec.dpo.reference_model.ref:
            reference = str(parse_ref(spec.dpo.reference_model.ref))
    elif spec.HasField("dpo"):
        raise _bad("dpo", "DPO settings apply to method dpo only")

    output = spec.output
    output_name = output.name or f"{base.model}-{method.value}"
    check_model_name(output_name, "output.name")
    for alias in output.aliases:
        check_alias_name(alias)
    if output.merge_lora and lora is None:
        raise _bad(
            "output.merge_lora", "only LoRA adapters can be merged (methods lora, qlora, or dpo with lora)"
        )

    return TrainPlan(
        base_model=spec.base_model.ref,
        method=method,
        dataset=dataset,
        learning_rate=args.learning_rate or default_lr,
        lr_scheduler=scheduler,
        warmup_ratio=args.warmup_ratio if args.warmup_ratio else 0.03,
        num_epochs=args.num_epochs or 1.0,
        max_steps=args.max_steps,
        micro_batch_size=args.micro_batch_size or 1,
        gradient_accumulation_steps=args.gradient_accumulation_steps or 1,
        gradient_checkpointing=args.gradient_checkpointing,
        precision=precision,
        seed=args.seed or 42,
        max_length=max_length,
        packing=args.packing,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps or 10,
        weight_decay=args.weight_decay,
        max_grad_norm=max_grad_norm,
        zero_stage=zero_stage,
        zero_offload=args.zero_offload,
        num_workers=args.num_workers or 1,
        lora=lora,
        prefix_tokens=prefix_tokens,
        dpo_beta=beta,
        dpo_reference=reference,
        output_name=output_name,
        aliases=tuple(output.aliases),
        merge_lora=output.merge_lora,
        labels=dict(spec.labels),
    )


def _dataset(spec: trainer_pb2.DatasetSpec, method: Method) -> DatasetPlan:
    if not spec.uri:
        raise _bad("dataset.uri", "required: a JSONL file path, a URL, or a registry artifact 'ref:path'")
    dataset_format = _FORMATS.get(spec.format)
    if dataset_format is None:
        raise _bad("dataset.format", f"unknown value {spec.format}")
    if not 0 <= spec.eval_split <= 0.5:
        raise _bad("dataset.eval_split", f"must be in [0, 0.5], got {spec.eval_split}")
    if spec.eval_split and spec.eval_uri:
        raise _bad("dataset.eval_split", "give either eval_split or eval_uri, not both")
    if spec.sha256 and not _SHA256.fullmatch(spec.sha256):
        raise _bad("dataset.sha256", "must be 64 lowercase hex digits")
    check_format_for_method(dataset_format, method, "dataset.format")
    return DatasetPlan(spec.uri, dataset_format, spec.eval_split, spec.eval_uri, spec.sha256)


def check_format_for_method(dataset_format: DatasetFormat, method: Method, where: str) -> None:
    """Preference data for DPO only, and DPO needs preference data; pretraining reads text."""
    if dataset_format == DatasetFormat.AUTO:
        return
    if method == Method.DPO and not dataset_format.is_preference:
        raise _bad(
            where, f"method dpo needs preference pairs (dpo_src_tgt or dpo_pairs), not {dataset_format.value}"
        )
    if method != Method.DPO and dataset_format.is_preference:
        raise _bad(where, f"{dataset_format.value} holds preference pairs, which only method dpo trains on")
    if method == Method.PRETRAIN and dataset_format != DatasetFormat.TEXT:
        raise _bad(where, f"method pretrain reads raw text (format text), not {dataset_format.value}")


def _lora(spec: trainer_pb2.TrainJobSpec, method: Method) -> LoraPlan | None:
    wants = method in (Method.LORA, Method.QLORA) or (
        method in (Method.DPO, Method.PRETRAIN) and spec.HasField("lora")
    )
    if not wants:
        if spec.HasField("lora"):
            raise _bad("lora", f"LoRA settings do not apply to method {method.value}")
        return None
    lora = spec.lora
    r = lora.r or 8
    if lora.alpha < 0:
        raise _bad("lora.alpha", f"must be > 0, got {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        raise _bad("lora.dropout", f"must be in [0, 1), got {lora.dropout}")
    targets = tuple(lora.target_modules)
    if "all-linear" in targets and len(targets) > 1:
        raise _bad("lora.target_modules", '"all-linear" stands alone')
    return LoraPlan(r=r, alpha=lora.alpha or 2.0 * r, dropout=lora.dropout, target_modules=targets)
