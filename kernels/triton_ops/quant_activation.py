"""Per-token (dynamic) or per-tensor (static) quantization of activations to INT8 or FP8.

One program per row: a pass for the row's absolute maximum (dynamic only),
then a pass writing codes, both in column chunks so any width fits. Divisions
round to nearest (`div_rn`; a GPU's `/` is approximate), so the codes are the
reference's bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cairn.kernels.reference.quant_codes import FP8_DTYPE, code_max
from cairn.kernels.triton_ops.quant_codes import MIN_SCALE, to_codes

_BLOCK = 1024


@triton.jit
def _quantize_rows_kernel(
    x_ptr,
    codes_ptr,
    scale_ptr,
    stride_x,
    stride_codes,
    n_cols,
    QMAX: tl.constexpr,
    STATIC: tl.constexpr,
    IS_FP8: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    if STATIC:
        scale = tl.load(scale_ptr)
    else:
        peak = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(x_row + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
            peak = tl.maximum(peak, tl.abs(x))
        scale = tl.maximum(tl.math.div_rn(tl.max(peak, axis=0), QMAX), MIN_SCALE)
        tl.store(scale_ptr + row, scale)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(codes_ptr + row * stride_codes + cols, to_codes(tl.math.div_rn(x, scale), IS_FP8), mask=mask)


def quantize_activations(
    x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """See `cairn.kernels.reference.quant_codes.quantize_activations`."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    rows, cols = x.shape
    codes = torch.empty((rows, cols), dtype=dtype, device=x.device)
    static = scale is not None
    if not static:
        scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    if rows:
        _quantize_rows_kernel[(rows,)](
            x,
            codes,
            scale,
            x.stride(0),
            codes.stride(0),
            cols,
            QMAX=code_max(dtype),
            STATIC=static,
            IS_FP8=dtype == FP8_DTYPE,
            BLOCK=min(_BLOCK, triton.next_power_of_2(cols)),
            num_warps=4,
        )
    return codes, scale
