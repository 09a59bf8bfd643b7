"""Picks the implementation per call: Triton on CUDA/XPU tensors, the torch reference elsewhere.

`CAIRN_KERNELS=reference` (read at import) or `force_reference(True)` sends
every call to the reference, e.g. to bisect a numerical difference on a GPU.
`CAIRN_GEMV=triton` or `triton_gemv(True)` moves decode-size linear layers
from cuBLAS to the Triton GEMV (`triton_ops/skinny_gemm.py`), off by default until
an H200 run shows it faster.

Under torch.compile each call goes through its `torch.ops.cairn` custom op
(`custom_ops.py`) instead, which Dynamo keeps as one opaque node; eager calls
skip the custom-op dispatcher, which costs about 20 us a call.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType, TracebackType

import torch
import torch.nn.functional as F

from cairn.common.errors import InvalidArgument
from cairn.kernels import reference

# The most rows `linear` sends to the Triton GEMV (skinny_gemm.MAX_ROWS; not imported,
# since importing Triton is optional here).
GEMV_MAX_ROWS = 16

_TRITON_DEVICE_TYPES = ("cuda", "xpu")
_MODES = ("auto", "reference")
_GEMVS = ("cublas", "triton")


def _setting(variable: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(variable, default).strip().lower() or default
    if value not in choices:
        raise InvalidArgument(f"{variable} must be one of {choices}, got {value!r}")
    return value


_switches = {
    "reference": _setting("CAIRN_KERNELS", "auto", _MODES) == "reference",
    "triton_gemv": _setting("CAIRN_GEMV", "cublas", _GEMVS) == "triton",
}


class _Switch:
    """`switch(True)` sets it; `with switch():` sets it for a block."""

    name = ""

    def __init__(self, enabled: bool = True) -> None:
        self._previous = _switches[self.name]
        _switches[self.name] = enabled

    def __enter__(self) -> _Switch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _switches[self.name] = self._previous


class force_reference(_Switch):
    """Every kernel call to the torch reference (`CAIRN_KERNELS=reference` at import)."""

    name = "reference"


class triton_gemv(_Switch):
    """Linear layers of decode batches (at most 16 rows, no bias) on an accelerator run the
    Triton GEMV instead of cuBLAS (`CAIRN_GEMV=triton` at import). CUDA graphs keep the
    kernels they captured: set it before capture."""

    name = "triton_gemv"


def reference_forced() -> bool:
    return _switches["reference"]


@functools.cache
def _triton_ops() -> ModuleType | None:
    if importlib.util.find_spec("triton") is None:
        return None
    from cairn.kernels import triton_ops

    return triton_ops


def backend_for(tensor: torch.Tensor) -> ModuleType:
    """The module that runs kernels for `tensor`: `cairn.kernels.triton_ops` or `cairn.kernels.reference`."""
    if _switches["reference"] or tensor.device.type not in _TRITON_DEVICE_TYPES:
        return reference
    return _triton_ops() or reference


def gemv_applies(x: torch.Tensor) -> bool:
    """Whether `x` [rows, K] goes through the Triton GEMV: `triton_gemv` is on, x is a decode
    batch (at most GEMV_MAX_ROWS rows) on an accelerator, and nothing is being compiled."""
    return (
        _switches["triton_gemv"]
        and x.dim() == 2
        and x.shape[0] <= GEMV_MAX_ROWS
        and not torch.compiler.is_compiling()
        and backend_for(x) is not reference
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, on the Triton GEMV where `gemv_applies` (and there is no bias)."""
    if bias is None and gemv_applies(x):
        return backend_for(x).gemv(x, weight)
    return F.linear(x, weight, bias)


def rms_norm_gemv(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F.linear(rms_norm(h), weight), h) with h = x + residual, or x when residual is None; the
    Triton side is one launch. For rows where `gemv_applies`."""
    return backend_for(x).rms_norm_gemv(x, residual, norm_weight, eps, weight)


def silu_and_mul_gemv(gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(silu_and_mul(gate_up), weight); the Triton side is one launch. For rows where
    `gemv_applies`."""
    return backend_for(gate_up).silu_and_mul_gemv(gate_up, weight)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x * rsqrt(mean(x^2) + eps) * weight in fp32, cast to x.dtype.

    With `residual`: h = x + residual, returns (rms_norm(h) * weight, h).
    """
    if torch.compiler.is_compiling():
        if residual is None:
            return torch.ops.cairn.rms_norm(x, weight, eps)
        return torch.ops.cairn.add_rms_norm(x, weight, eps, residual)
    return backend_for(x).rms_norm(x, weight, eps, residual)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[..., 2*I] -> silu(x[..., :I]) * x[..., I:]."""
    if torch.compiler.is_compiling():
        return torch.ops.cairn.silu_and_mul(x)
    return backend_for(x).silu_and_mul(x)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, rope_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hk, D] at `positions` [T] (NeoX rotate_half style).

    The Triton path rotates in place and returns the same tensors: use the
    return values and do not rely on the inputs staying unchanged. The engine
    uses `rotary_and_cache`, which also stores k and v; this is for caches it
    cannot store into (quantized ones).
    """
    return backend_for(q).apply_rotary(q, k, positions, rope_cache)


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store k, v [T, Hk, D] at slots block_id * block_size + offset; a negative slot is skipped."""
    backend_for(k).write_kv_cache(k, v, k_cache, v_cache, slot_mapping)


def rotary_and_cache(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    rope_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """This step's fused projection output qkv [T, (Hq + 2 Hk) * D] (+ `bias`) -> rotated q [T, Hq, D].

    k (rotated) and v are stored at `slot_mapping` [T] (block_id * block_size
    + offset; a negative slot is skipped) of the caches and nowhere else;
    `positions` [T] index `rope_cache` (NeoX rotate_half style). Positions and
    slots may be int32 or int64.
    """
    args = (qkv, positions, rope_cache, k_cache, v_cache, slot_mapping, bias)
    if torch.compiler.is_compiling():
        return torch.ops.cairn.rotary_and_cache(*args)
    return backend_for(qkv).rotary_and_cache(*args)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query per sequence (its last position) over its `seq_lens[b]` cached tokens -> [B, Hq, D].

    A row with seq_len 0 yields zeros.
    """
    if torch.compiler.is_compiling():
        return torch.ops.cairn.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)
    return backend_for(q).paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of packed query chunks over their cached context -> [T, Hq, D].

    Sequence s's queries are the last q_len_s of its seq_lens[s] context positions.
    """
    args = (q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale)
    if torch.compiler.is_compiling():
        return torch.ops.cairn.prefill_attention(*args)
    return backend_for(q).prefill_attention(*args)


def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    token_order: torch.Tensor,
    slot_starts: torch.Tensor,
    slice_offsets: list[int],
) -> torch.Tensor:
    """y += each token's adapter delta, in place (batched LoRA; layout in `reference/lora.py`)."""
    args = (y, x, lora_a, lora_b, token_order, slot_starts, slice_offsets)
    if torch.compiler.is_compiling():
        torch.ops.cairn.add_lora(*args)
        return y
    return backend_for(x).add_lora(*args)
