"""A quantization job's spec checked once and turned into a plan with every default filled in.

Everything a person can get wrong without loading the model is caught here,
naming the field: scheme options that do not apply to the method, methods
that need calibration data but have none, out-of-range values. What needs the
model (architecture, whether the group size divides each layer) is checked by
`check_model` when the model is at hand.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cairn.common.errors import InvalidArgument
from cairn.services.registry.refs import check_alias_name, check_model_name, parse_ref
from cairn.services.worker.models import ModelConfig
from cairn.v1 import quantizer_pb2

DEFAULT_GROUP_SIZE = 128
DEFAULT_ALPHA = 0.8
DEFAULT_DAMP = 0.01
DEFAULT_CALIBRATION_SAMPLES = 128
DEFAULT_EVAL_SAMPLES = 32
DEFAULT_SEQ_LEN = 512
MAX_SAMPLES = 4096
MAX_SEQ_LEN = 32768
LM_HEAD = "lm_head"


class Method(str, enum.Enum):
    """The scheme; the values are the CLI's --quant-type names."""

    WEIGHT_ONLY_INT8 = "weight_only_int8"
    WEIGHT_ONLY_INT4 = "weight_only_int4"
    GPTQ = "gptq"
    AWQ = "awq"
    SMOOTH_QUANT = "smooth_quant"
    FP8 = "fp8"
    KV_CACHE_ONLY = "kv_cache_only"

    @property
    def needs_calibration(self) -> bool:
        return self in (Method.GPTQ, Method.AWQ, Method.SMOOTH_QUANT)

    @property
    def weight_only(self) -> bool:
        return self in (Method.WEIGHT_ONLY_INT8, Method.WEIGHT_ONLY_INT4, Method.GPTQ, Method.AWQ)


_FROM_PROTO = {
    quantizer_pb2.QUANT_TYPE_WEIGHT_ONLY_INT8: Method.WEIGHT_ONLY_INT8,
    quantizer_pb2.QUANT_TYPE_WEIGHT_ONLY_INT4: Method.WEIGHT_ONLY_INT4,
    quantizer_pb2.QUANT_TYPE_GPTQ: Method.GPTQ,
    quantizer_pb2.QUANT_TYPE_AWQ: Method.AWQ,
    quantizer_pb2.QUANT_TYPE_SMOOTH_QUANT: Method.SMOOTH_QUANT,
    quantizer_pb2.QUANT_TYPE_FP8: Method.FP8,
    quantizer_pb2.QUANT_TYPE_KV_CACHE_ONLY: Method.KV_CACHE_ONLY,
}
TO_PROTO = {method: value for value, method in _FROM_PROTO.items()}
_DTYPES = {
    "": "bfloat16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}
_KV_DTYPES = ("int8", "fp8")


@dataclass(frozen=True)
class DataPlan:
    dataset_uri: str = ""
    token_ids_uri: str = ""
    num_samples: int = DEFAULT_CALIBRATION_SAMPLES
    seq_len: int = DEFAULT_SEQ_LEN

    @property
    def given(self) -> bool:
        return bool(self.dataset_uri or self.token_ids_uri)


@dataclass(frozen=True)
class KVPlan:
    dtype: str
    static_scales: bool


@dataclass(frozen=True)
class QuantPlan:
    source: str
    method: Method
    # Weight bits; 0 for KV-cache-only.
    bits: int
    # None: one scale per output channel.
    group_size: int | None
    symmetric: bool
    act_order: bool
    damp_percent: float
    alpha: float
    # Dtype of everything left unquantized (and of the scales): "bfloat16" or "float16".
    dtype: str
    kv_cache: KVPlan | None
    calibration: DataPlan
    eval: DataPlan
    output_name: str
    aliases: tuple[str, ...] = ()
    ignore: tuple[str, ...] = (LM_HEAD,)

    @property
    def scheme(self) -> str:
        """Short scheme name for output names and logs: w4a16-gptq, w8a8-int8, fp8, kv-int8, ..."""
        names = {
            Method.WEIGHT_ONLY_INT8: "w8a16",
            Method.WEIGHT_ONLY_INT4: "w4a16",
            Method.GPTQ: f"w{self.bits}a16-gptq",
            Method.AWQ: "w4a16-awq",
            Method.SMOOTH_QUANT: "w8a8-int8",
            Method.FP8: "fp8",
            Method.KV_CACHE_ONLY: "",
        }
        kv = f"kv-{self.kv_cache.dtype}" if self.kv_cache else ""
        return "-".join(part for part in (names[self.method], kv) if part)

    @property
    def needs_calibration(self) -> bool:
        return self.method.needs_calibration or (self.kv_cache is not None and self.kv_cache.static_scales)

    def parameters(self) -> dict[str, Any]:
        """What the recipe records: everything that shaped the result except the data itself."""
        keep = ("bits", "group_size", "symmetric", "act_order", "damp_percent", "alpha", "dtype", "ignore")
        params: dict[str, Any] = {k: v for k, v in asdict(self).items() if k in keep}
        params["method"] = self.method.value
        params["kv_cache"] = asdict(self.kv_cache) if self.kv_cache else None
        params["calibration"] = {
            "num_samples": self.calibration.num_samples,
            "seq_len": self.calibration.seq_len,
        }
        return params


def plan_from_spec(spec: quantizer_pb2.QuantizeJobSpec) -> QuantPlan:
    source = spec.source.ref.strip()
    if not source:
        raise InvalidArgument(
            "source is empty; give a registry reference (name@version) or a model directory"
        )
    method = _method(spec.quant_type)
    bits = _bits(method, spec.bits)
    group_size = _group_size(method, spec.group_size)
    symmetric = spec.symmetric if spec.HasField("symmetric") else True
    if not symmetric and not method.weight_only:
        raise InvalidArgument(f"symmetric=false applies to integer weight-only methods, not {method.value}")
    if spec.act_order and method != Method.GPTQ:
        raise InvalidArgument(f"act_order applies to gptq only, not {method.value}")
    # The proto's floats are float32: round off the binary noise (0.05 -> 0.0500000007).
    damp = round(spec.damp_percent, 6) if spec.HasField("damp_percent") else DEFAULT_DAMP
    if spec.HasField("damp_percent") and method != Method.GPTQ:
        raise InvalidArgument(f"damp_percent applies to gptq only, not {method.value}")
    if not 0.0 < damp <= 1.0:
        raise InvalidArgument(f"damp_percent must be in (0, 1], got {damp}")
    alpha = round(spec.smoothquant_alpha, 6) if spec.HasField("smoothquant_alpha") else DEFAULT_ALPHA
    if spec.HasField("smoothquant_alpha") and method != Method.SMOOTH_QUANT:
        raise InvalidArgument(f"smoothquant_alpha applies to smooth_quant only, not {method.value}")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgument(f"smoothquant_alpha must be in [0, 1], got {alpha}")
    dtype = _DTYPES.get(spec.dtype.strip().lower())
    if dtype is None:
        raise InvalidArgument(f"dtype {spec.dtype!r} is not one of bf16, fp16")
    kv_cache = _kv_cache(method, spec.kv_cache)
    calibration = _data(
        "calibration", spec.calibration.dataset_uri, spec.calibration.token_ids_uri,
        spec.calibration.num_samples, spec.calibration.seq_len, DEFAULT_CALIBRATION_SAMPLES,
    )  # fmt: skip
    evaluation = _data(
        "eval", spec.eval.dataset_uri, "", spec.eval.num_samples, spec.eval.seq_len, DEFAULT_EVAL_SAMPLES
    )
    plan = QuantPlan(
        source=source,
        method=method,
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        act_order=spec.act_order,
        damp_percent=damp,
        alpha=alpha,
        dtype=dtype,
        kv_cache=kv_cache,
        calibration=calibration,
        eval=evaluation,
        output_name="",
        aliases=tuple(check_alias_name(a) for a in spec.aliases),
        ignore=tuple(dict.fromkeys([LM_HEAD, *(_ignore(p) for p in spec.ignore)])),
    )
    if plan.needs_calibration and not calibration.given:
        what = method.value if method.needs_calibration else "static KV-cache scales"
        raise InvalidArgument(
            f"{what} needs calibration data: set calibration.dataset_uri (text or JSONL) or "
            "calibration.token_ids_uri (a token-ids file)"
        )
    name = spec.output_name or f"{source_name(source)}-{plan.scheme}"
    return QuantPlan(**{**plan.__dict__, "output_name": check_model_name(name, "output_name")})


def _method(value: int) -> Method:
    if value == quantizer_pb2.QUANT_TYPE_UNSPECIFIED:
        raise InvalidArgument(f"quant_type is required; one of {', '.join(m.value for m in Method)}")
    if value not in _FROM_PROTO:
        raise InvalidArgument(f"unknown quant_type {value}; one of {', '.join(m.value for m in Method)}")
    return _FROM_PROTO[value]


def _bits(method: Method, bits: int) -> int:
    fixed = {
        Method.WEIGHT_ONLY_INT8: 8,
        Method.WEIGHT_ONLY_INT4: 4,
        Method.AWQ: 4,
        Method.SMOOTH_QUANT: 8,
        Method.FP8: 8,
        Method.KV_CACHE_ONLY: 0,
    }
    if method == Method.GPTQ:
        if bits not in (0, 4, 8):
            raise InvalidArgument(f"bits must be 4 or 8 for gptq, got {bits}")
        return bits or 4
    if bits and bits != fixed[method]:
        raise InvalidArgument(f"{method.value} quantizes to {fixed[method]} bits; bits={bits} does not apply")
    return fixed[method]


def _group_size(method: Method, value: int) -> int | None:
    """0: the method's default (128 for INT4-style schemes, per channel otherwise); -1: per channel."""
    if value < -1:
        raise InvalidArgument(f"group_size must be positive, 0 (default) or -1 (per channel), got {value}")
    if method in (Method.SMOOTH_QUANT, Method.FP8, Method.KV_CACHE_ONLY):
        if value > 0:
            raise InvalidArgument(f"{method.value} uses per-channel weight scales; group_size does not apply")
        return None
    if value == -1 or (value == 0 and method == Method.WEIGHT_ONLY_INT8):
        return None
    return value or DEFAULT_GROUP_SIZE


def _kv_cache(method: Method, spec: quantizer_pb2.KvCacheQuantSpec) -> KVPlan | None:
    dtype = spec.dtype.strip().lower()
    if not dtype:
        if method == Method.KV_CACHE_ONLY:
            raise InvalidArgument("kv_cache_only needs kv_cache.dtype (int8 or fp8)")
        if spec.static_scales:
            raise InvalidArgument("kv_cache.static_scales is set but kv_cache.dtype is empty")
        return None
    if dtype not in _KV_DTYPES:
        raise InvalidArgument(f"kv_cache.dtype {spec.dtype!r} is not one of {', '.join(_KV_DTYPES)}")
    return KVPlan(dtype, spec.static_scales)


def _data(
    what: str, dataset_uri: str, token_ids_uri: str, num_samples: int, seq_len: int, default_samples: int
) -> DataPlan:
    if dataset_uri and token_ids_uri:
        raise InvalidArgument(f"{what}: give dataset_uri or token_ids_uri, not both")
    num_samples = num_samples or default_samples
    seq_len = seq_len or DEFAULT_SEQ_LEN
    if num_samples > MAX_SAMPLES:
        raise InvalidArgument(f"{what}.num_samples must be at most {MAX_SAMPLES}, got {num_samples}")
    if not 2 <= seq_len <= MAX_SEQ_LEN:
        raise InvalidArgument(f"{what}.seq_len must be in [2, {MAX_SEQ_LEN}], got {seq_len}")
    return DataPlan(dataset_uri.strip(), token_ids_uri.strip(), num_samples, seq_len)


def _ignore(pattern: str) -> str:
    pattern = pattern.strip()
    if not pattern:
        raise InvalidArgument("ignore has an empty entry")
    return pattern


def is_directory(location: str) -> bool:
    """A path ("/", "./", "../", "~" or an existing directory) rather than a registry reference,
    the rule `cairn.services.worker.loader.resolve_model_path` applies too."""
    return location.startswith(("/", "./", "../", "~")) or Path(location).expanduser().is_dir()


def source_name(source: str) -> str:
    """The model name part of a registry reference, or a directory's name."""
    if is_directory(source):
        return Path(source).expanduser().resolve().name
    return parse_ref(source).model.replace("/", "-")


def check_model(plan: QuantPlan, config: ModelConfig) -> None:
    """What needs the model: every quantized layer's input size takes the group size (and packing)."""
    if plan.method == Method.KV_CACHE_ONLY:
        return
    inputs = {
        "hidden_size (q/k/v, gate/up inputs)": config.hidden_size,
        "num_heads * head_dim (o_proj input)": config.num_heads * config.head_dim,
        "intermediate_size (down_proj input)": config.intermediate_size,
    }
    for what, size in inputs.items():
        if plan.group_size is not None and size % plan.group_size:
            raise InvalidArgument(
                f"group_size {plan.group_size} does not divide {what} = {size}; choose a divisor "
                "(e.g. 32, 64, 128) or -1 for per-channel scales"
            )
        if plan.bits and size % (32 // plan.bits):
            raise InvalidArgument(
                f"{what} = {size} is not a multiple of {32 // plan.bits} ({plan.bits}-bit packing)"
            )
