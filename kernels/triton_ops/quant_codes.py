"""Triton twins of `cairn.kernels.reference.quant_codes`: the same rounding, so codes match exactly.

FP8 values are rounded to the e4m3 grid in fp32 before the cast, so the cast
itself is exact: torch rounds half to even, and casts differ across Triton
backends (the CPU interpreter mis-rounds values whose mantissa carries into
the exponent, e.g. 124 -> 64).
"""

from __future__ import annotations

import triton
import triton.language as tl

from cairn.kernels.reference.quant_codes import FP8_MAX, INT8_MAX, MIN_SCALE

__all__ = ["FP8_MAX", "INT8_MAX", "MIN_SCALE", "round_half_even", "to_codes"]


@triton.jit
def round_half_even(x):
    """torch.round: halfway cases go to the even neighbour."""
    rounded = tl.floor(x + 0.5)
    tie = (rounded - x) == 0.5
    odd = (rounded - 2.0 * tl.floor(rounded * 0.5)) != 0.0
    return tl.where(tie & odd, rounded - 1.0, rounded)


@triton.jit
def round_to_e4m3(x):
    """fp32 -> the nearest float8 e4m3 value (ties to even), still as fp32; |x| <= 448."""
    exponent = ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    # Normal e4m3 numbers keep 3 mantissa bits; below 2**-6 the spacing stays 2**-9 (subnormals).
    step_exponent = tl.maximum(exponent, -6) - 3
    step = ((step_exponent + 127) << 23).to(tl.float32, bitcast=True)
    return round_half_even(x / step) * step


@triton.jit
def to_codes(values, IS_FP8: tl.constexpr):
    """Scaled fp32 values -> int8 or float8e4nv codes (saturating)."""
    if IS_FP8:
        return round_to_e4m3(tl.minimum(tl.maximum(values, -FP8_MAX), FP8_MAX)).to(tl.float8e4nv)
    return tl.minimum(tl.maximum(round_half_even(values), -128.0), 127.0).to(tl.int8)
