"""Fused RMSNorm (+ residual add): one program per row, the whole row in registers."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    hidden_ptr,
    stride_x,
    stride_residual,
    stride_out,
    stride_hidden,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(residual_ptr + row * stride_residual + cols, mask=mask, other=0.0).to(tl.float32)
        # Round the sum to the activation dtype before normalising, as the reference does.
        x = x.to(hidden_ptr.dtype.element_ty)
        tl.store(hidden_ptr + row * stride_hidden + cols, x, mask=mask)
        x = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    normed = (x * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (normed * weight).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    shape = x.shape
    x2d = _rows(x)
    out = torch.empty_like(x2d)
    hidden = torch.empty_like(x2d) if residual is not None else out
    residual2d = _rows(residual) if residual is not None else x2d
    block = triton.next_power_of_2(x2d.shape[1])
    _rms_norm_kernel[(x2d.shape[0],)](
        x2d,
        residual2d,
        weight,
        out,
        hidden,
        x2d.stride(0),
        residual2d.stride(0),
        out.stride(0),
        hidden.stride(0),
        x2d.shape[1],
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK=block,
        num_warps=min(max(block // 512, 1), 16),
    )
    if residual is None:
        return out.view(shape)
    return out.view(shape), hidden.view(shape)


def _rows(t: torch.Tensor) -> torch.Tensor:
    t2d = t.reshape(-1, t.shape[-1])
    return t2d if t2d.stride(-1) == 1 else t2d.contiguous()
