"""Triton twins of `cairn.kernels.reference.quant_codes`: the same rounding, so codes match exactly.

FP8 values are rounded to the e4m3 grid in fp32 before the cast, so the cast
itself is exact: torch rounds half to even, and casts differ across Triton
backends (the CPU interpreter mis-rounds values whose mantissa carries into
the exponent, e.g. 124 -> 64).
"""

from __future__ import annotations

import triton
import triton.language as tl

from cairn.kernels.reference import quant_codes as reference

# A global that a @triton.jit function reads must be a constexpr object: the GPU
# compiler rejects plain floats (the CPU interpreter does not, so CI compiles every
# kernel for sm_90 too: tests/kernels/test_kernels_compile.py).
FP8_MAX = tl.constexpr(reference.FP8_MAX)
INT8_MAX = tl.constexpr(reference.INT8_MAX)
MIN_SCALE = tl.constexpr(reference.MIN_SCALE)

__all__ = ["FP8_MAX", "INT8_MAX", "MIN_SCALE", "round_half_even", "to_codes"]


@triton.jit
def round_half_even(x):
    """torch.round (halfway cases to the even neighbour) for |x| < 2**22: adding and taking
    away 1.5 * 2**23 leaves the rounding to fp32's own round-to-nearest-even. (floor(x + 0.5)
    is off where x + 0.5 itself rounds up, e.g. x = 0.49999997.)"""
    return (x + 12582912.0) - 12582912.0


@triton.jit
def round_to_e4m3(x):
    """fp32 -> the nearest float8 e4m3 value (ties to even), still as fp32; |x| <= 448."""
    exponent = ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    # Normal e4m3 numbers keep 3 mantissa bits; below 2**-6 the spacing stays 2**-9 (subnormals).
    step_exponent = tl.maximum(exponent, -6) - 3
    step = ((step_exponent + 127) << 23).to(tl.float32, bitcast=True)
    # Times the exact reciprocal power of two: a GPU's `/` is approximate.
    inverse = ((127 - step_exponent) << 23).to(tl.float32, bitcast=True)
    return round_half_even(x * inverse) * step


@triton.jit
def to_codes(values, IS_FP8: tl.constexpr):
    """Scaled fp32 values -> int8 or float8e4nv codes (saturating)."""
    # One return after a constexpr if/else: code after an early return in a constexpr
    # branch is still compiled, and its other return type fails on the GPU.
    if IS_FP8:
        codes = round_to_e4m3(tl.minimum(tl.maximum(values, -FP8_MAX), FP8_MAX)).to(tl.float8e4nv)
    else:
        # Saturating first keeps round_half_even in its range; it rounds the same.
        codes = round_half_even(tl.minimum(tl.maximum(values, -128.0), 127.0)).to(tl.int8)
    return codes
