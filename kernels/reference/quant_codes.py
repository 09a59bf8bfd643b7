"""How real values become INT8 or FP8 e4m3 codes, and per-token quantization of activations.

INT8 rounds half to even (torch.round) and saturates to [-128, 127]; FP8
saturates to +-448 before the cast, since e4m3 has no infinity. A scale maps
the largest magnitude onto the code range (127 or 448); it never drops below
`MIN_SCALE`, so an all-zero row quantizes to zeros instead of NaN.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
INT8_MAX = 127.0
MIN_SCALE = 1e-12
CODE_DTYPES = (torch.int8, FP8_DTYPE)


def code_max(dtype: torch.dtype) -> float:
    if dtype == torch.int8:
        return INT8_MAX
    if dtype == FP8_DTYPE:
        return FP8_MAX
    raise ValueError(f"codes are int8 or float8_e4m3fn, not {dtype}")


def scale_for(peak: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The scale that maps magnitudes `peak` onto the code range of `dtype`.

    Divided by a tensor on `peak`'s device, not a Python number: CUDA torch turns
    division by a CPU scalar into multiplication by its reciprocal, a bit off
    the exact division the kernels (and the CPU) do."""
    limit = torch.full((), code_max(dtype), dtype=peak.dtype, device=peak.device)
    return (peak / limit).clamp_min(MIN_SCALE)


def to_codes(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Already-scaled fp32 values -> codes of `dtype`."""
    if dtype == torch.int8:
        return values.round().clamp(-128.0, 127.0).to(torch.int8)
    code_max(dtype)
    return values.clamp(-FP8_MAX, FP8_MAX).to(dtype)


def quantize_activations(
    x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x `[M, K]` -> (codes `[M, K]`, fp32 scale). Without `scale`, one per row (`[M, 1]`, dynamic
    per-token); with a static per-tensor `scale` (`[1]`), that one."""
    values = x.float()
    if scale is None:
        scale = scale_for(values.abs().amax(dim=-1, keepdim=True), dtype)
    return to_codes(values / scale, dtype), scale
