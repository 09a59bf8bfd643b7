"""The quantization a checkpoint declares in config.json (`quantization_config`) and the engine asks for.

Three producers are understood: compressed-tensors (llm-compressor, cairn's
quantizer), GPTQ (AutoGPTQ / GPTQModel, `quant_method: gptq`) and AWQ
(AutoAWQ's GEMM layout, `quant_method: awq`). Each becomes one `QuantConfig`:
a weight scheme shared by every quantized linear layer, the layers it covers,
and the KV-cache scheme. Anything else is refused with the reason, never
served wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cairn.common.errors import InvalidArgument

# The engine's `quantization` setting (cairn.v1.Quantization) and `kv_cache_dtype` (cairn.v1.KvCacheDtype).
QUANTIZATIONS = ("auto", "none", "w8a16", "w4a16", "w8a8_int8", "w8a8_fp8")
KV_CACHE_DTYPES = ("auto", "int8", "fp8")

WEIGHT_ONLY = "weight_only"
W8A8_INT8 = "w8a8_int8"
W8A8_FP8 = "w8a8_fp8"

_CT_WEIGHT_ONLY_FORMATS = ("pack-quantized", "naive-quantized", "int-quantized")
_CT_W8A8_FORMATS = ("int-quantized", "float-quantized", "naive-quantized")


@dataclass(frozen=True)
class WeightScheme:
    method: str
    bits: int = 8
    # None: one scale per output channel.
    group_size: int | None = None
    # Zero points stored (asymmetric codes); GPTQ and AWQ always store them.
    has_zeros: bool = False
    # The checkpoint carries act-order permutations (GPTQ desc_act, compressed-tensors g_idx).
    act_order: bool = False
    # W8A8 with a calibrated per-tensor input scale instead of dynamic per-token scales.
    static_input_scale: bool = False
    # "compressed-tensors", "gptq", "gptq_v2", "awq", or "random" (dummy weights).
    checkpoint_format: str = "compressed-tensors"

    @property
    def name(self) -> str:
        """The engine's name for it: w8a16, w4a16, w8a8_int8 or w8a8_fp8."""
        return f"w{self.bits}a16" if self.method == WEIGHT_ONLY else self.method


@dataclass(frozen=True)
class KVScheme:
    # "int8" or "fp8".
    dtype: str
    # Calibrated per-tensor scales in the checkpoint (k_scale / v_scale per layer).
    static: bool


@dataclass(frozen=True)
class QuantConfig:
    weights: WeightScheme | None
    kv_cache: KVScheme | None = None
    # compressed-tensors targets: "Linear" (every linear layer), module names, or "re:<regex>".
    targets: tuple[str, ...] = ("Linear",)
    # Module names (or "re:<regex>") left in full precision.
    ignore: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return "none" if self.weights is None else self.weights.name

    def quantizes(self, module: str) -> bool:
        """Whether linear layer `module` (HF name, e.g. model.layers.0.self_attn.q_proj) is quantized."""
        if self.weights is None or any(matches_module(module, pattern) for pattern in self.ignore):
            return False
        return any(target == "Linear" or matches_module(module, target) for target in self.targets)


def matches_module(module: str, pattern: str) -> bool:
    """compressed-tensors matching: "re:<regex>" from the name's start, else the name or its last parts."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], module) is not None
    return module == pattern or module.endswith(f".{pattern}")


def dummy_scheme(name: str) -> QuantConfig:
    """Random weights of quantization `name` (load_format dummy): the common layout of each."""
    schemes = {
        "w8a16": WeightScheme(WEIGHT_ONLY, bits=8, checkpoint_format="random"),
        "w4a16": WeightScheme(WEIGHT_ONLY, bits=4, group_size=128, checkpoint_format="random"),
        "w8a8_int8": WeightScheme(W8A8_INT8, checkpoint_format="random"),
        "w8a8_fp8": WeightScheme(W8A8_FP8, checkpoint_format="random"),
    }
    return QuantConfig(schemes[name], ignore=("lm_head",))


def checkpoint_quantization(hf_config: dict[str, Any]) -> QuantConfig:
    """The quantization config.json declares; `QuantConfig(None)` for a plain checkpoint."""
    declared = hf_config.get("quantization_config")
    if not declared:
        return QuantConfig(None)
    method = str(declared.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        return _compressed_tensors(declared)
    if method == "gptq":
        return _gptq(declared)
    if method == "awq":
        return _awq(declared)
    raise InvalidArgument(
        f"quantization_config.quant_method {method!r} is not supported; the worker serves "
        "compressed-tensors, gptq and awq checkpoints"
    )


def _compressed_tensors(declared: dict[str, Any]) -> QuantConfig:
    groups = declared.get("config_groups") or {}
    schemes = {_ct_scheme(name, group, declared.get("format")) for name, group in groups.items()}
    if len(schemes) > 1:
        raise InvalidArgument(
            "compressed-tensors checkpoints with several weight schemes (mixed precision) are not "
            f"supported; found {sorted(s.name for s in schemes)}"
        )
    targets = tuple(t for group in groups.values() for t in group.get("targets") or ())
    return QuantConfig(
        weights=next(iter(schemes), None),
        kv_cache=_ct_kv_scheme(declared.get("kv_cache_scheme")),
        targets=targets or ("Linear",),
        ignore=tuple(declared.get("ignore") or ()),
    )


def _ct_scheme(name: str, group: dict[str, Any], default_format: str | None) -> WeightScheme:
    weights = group.get("weights")
    activations = group.get("input_activations")
    fmt = group.get("format") or default_format or ""
    where = f"compressed-tensors group {name!r}"
    if not weights:
        raise InvalidArgument(f"{where} quantizes no weights; only weight quantization is supported")
    strategy = weights.get("strategy") or ("group" if weights.get("group_size") else "tensor")
    if strategy not in ("channel", "group", "tensor"):
        raise InvalidArgument(
            f"{where}: weight strategy {strategy!r} is not supported (channel, group, tensor)"
        )
    bits, kind = int(weights.get("num_bits", 8)), weights.get("type", "int")
    if activations is None:
        if kind != "int" or bits not in (4, 8) or fmt not in _CT_WEIGHT_ONLY_FORMATS:
            raise InvalidArgument(
                f"{where}: weight-only {kind}{bits} in format {fmt!r} is not supported; "
                "weight-only needs int4/int8 in pack-quantized format"
            )
        if strategy == "tensor":
            raise InvalidArgument(f"{where}: weight-only needs channel or group scales, not one per tensor")
        return WeightScheme(
            WEIGHT_ONLY,
            bits=bits,
            group_size=int(weights["group_size"]) if strategy == "group" else None,
            has_zeros=not weights.get("symmetric", True),
            act_order=weights.get("actorder") in ("group", "dynamic"),
        )
    if bits != 8 or activations.get("num_bits", 8) != 8 or kind != activations.get("type", "int"):
        raise InvalidArgument(f"{where}: only W8A8 (int8 or fp8 weights and activations) is supported")
    if strategy == "group" or not weights.get("symmetric", True) or not activations.get("symmetric", True):
        raise InvalidArgument(f"{where}: W8A8 needs symmetric per-channel or per-tensor weight scales")
    if fmt not in _CT_W8A8_FORMATS:
        raise InvalidArgument(f"{where}: W8A8 format {fmt!r} is not supported")
    dynamic = bool(activations.get("dynamic", False))
    if activations.get("strategy") not in (("token", "tensor") if dynamic else ("tensor",)):
        raise InvalidArgument(
            f"{where}: activations must be dynamic per token or static per tensor, got "
            f"{activations.get('strategy')!r} (dynamic={dynamic})"
        )
    return WeightScheme(W8A8_FP8 if kind == "float" else W8A8_INT8, static_input_scale=not dynamic)


def _ct_kv_scheme(declared: dict[str, Any] | None) -> KVScheme | None:
    if not declared:
        return None
    kind = declared.get("type", "int")
    if int(declared.get("num_bits", 8)) != 8 or kind not in ("int", "float"):
        raise InvalidArgument(f"kv_cache_scheme {declared} is not supported; int8 or fp8 only")
    return KVScheme("fp8" if kind == "float" else "int8", static=not declared.get("dynamic", False))


def _gptq(declared: dict[str, Any]) -> QuantConfig:
    bits = int(declared.get("bits", 4))
    if bits not in (4, 8):
        raise InvalidArgument(f"GPTQ with {bits}-bit weights is not supported (4 or 8)")
    checkpoint_format = str(declared.get("checkpoint_format", "gptq")).lower()
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise InvalidArgument(
            f"GPTQ checkpoint_format {checkpoint_format!r} is not supported (gptq, gptq_v2)"
        )
    group_size = int(declared.get("group_size", 128))
    return QuantConfig(
        WeightScheme(
            WEIGHT_ONLY,
            bits=bits,
            group_size=group_size if group_size > 0 else None,
            has_zeros=True,
            act_order=bool(declared.get("desc_act", False)),
            checkpoint_format=checkpoint_format,
        ),
        ignore=("lm_head", *(declared.get("modules_to_not_convert") or ())),
    )


def _awq(declared: dict[str, Any]) -> QuantConfig:
    bits = int(declared.get("bits", declared.get("w_bit", 4)))
    version = str(declared.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm":
        raise InvalidArgument(f"AWQ {version} with {bits}-bit weights is not supported (4-bit GEMM layout)")
    if not declared.get("zero_point", True):
        raise InvalidArgument("AWQ checkpoints without zero points are not supported")
    group_size = int(declared.get("group_size", declared.get("q_group_size", 128)))
    return QuantConfig(
        WeightScheme(
            WEIGHT_ONLY,
            bits=4,
            group_size=group_size if group_size > 0 else None,
            has_zeros=True,
            checkpoint_format="awq",
        ),
        ignore=("lm_head", *(declared.get("modules_to_not_convert") or ())),
    )


def engine_quantization(requested: str, declared: QuantConfig, dummy: bool) -> QuantConfig:
    """Reconcile the engine's `quantization` setting with the checkpoint's declaration."""
    if requested not in QUANTIZATIONS:
        raise InvalidArgument(f"quantization must be one of {list(QUANTIZATIONS)}, got {requested!r}")
    if requested in ("auto", declared.name):
        return declared
    if requested == "none":
        raise InvalidArgument(
            f"the checkpoint is quantized ({declared.name}); serve it with quantization auto or "
            f"{declared.name}, or point at its unquantized source"
        )
    if declared.weights is None and dummy:
        return QuantConfig(dummy_scheme(requested).weights, declared.kv_cache, ignore=("lm_head",))
    if declared.weights is None:
        raise InvalidArgument(
            f"quantization {requested} needs a quantized checkpoint and this one is not quantized; "
            "produce one with `cairn quantize`"
        )
    raise InvalidArgument(f"quantization {requested} was asked for but the checkpoint is {declared.name}")
