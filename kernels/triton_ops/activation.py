"""SiLU(gate) * up over the fused gate/up projection output."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, n_inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_inter + cols, mask=mask, other=0.0).to(tl.float32)
    # Round the activation before the product, matching torch's silu(gate) * up in low precision.
    act = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    x2d = x.reshape(-1, x.shape[-1])
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    n_inter = x2d.shape[1] // 2
    out = torch.empty((x2d.shape[0], n_inter), dtype=x.dtype, device=x.device)
    grid = (x2d.shape[0], triton.cdiv(n_inter, _BLOCK))
    _silu_and_mul_kernel[grid](x2d, out, x2d.stride(0), out.stride(0), n_inter, BLOCK=_BLOCK, num_warps=4)
    return out.view(*x.shape[:-1], n_inter)
