"""W8A8 INT8 GEMM: int8 tensor-core products accumulated in int32, scales and bias applied in the epilogue.

`y = (x_codes @ w_codes.T) * x_scale * w_scale (+ bias)`. The x scale is per
token (`[M, 1]`) or per tensor (`[1]`), the weight's per output channel; a
stride of 0 broadcasts the per-tensor case. Programs walk the output in
groups of GROUP_M row tiles so neighbouring programs share weight tiles in L2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_GROUP_M = 8


@triton.jit
def _scaled_int8_gemm_kernel(
    a_ptr,
    b_ptr,
    a_scale_ptr,
    b_scale_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_am,
    stride_bn,
    stride_om,
    stride_a_scale,
    stride_b_scale,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        a = tl.load(
            a_ptr + rows[:, None].to(tl.int64) * stride_am + ks[None, :],
            mask=row_mask[:, None] & k_mask[None, :],
            other=0,
        )
        b = tl.load(
            b_ptr + cols[None, :].to(tl.int64) * stride_bn + ks[:, None],
            mask=k_mask[:, None] & col_mask[None, :],
            other=0,
        )
        acc += tl.dot(a, b, out_dtype=tl.int32)
    a_scale = tl.load(a_scale_ptr + rows * stride_a_scale, mask=row_mask, other=0.0)
    b_scale = tl.load(b_scale_ptr + cols * stride_b_scale, mask=col_mask, other=0.0)
    out = acc.to(tl.float32) * a_scale[:, None] * b_scale[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def scaled_int8_gemm(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """See `cairn.kernels.scaled_gemm` (INT8 codes). Scales must be fp32."""
    m, k = x_codes.shape
    n = w_codes.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=x_codes.device)
    if m == 0:
        return out
    block_m, block_n, block_k, num_warps, num_stages = _tiles(m)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _scaled_int8_gemm_kernel[grid](
        x_codes,
        w_codes,
        x_scale,
        w_scale,
        w_scale if bias is None else bias,
        out,
        m,
        n,
        k,
        x_codes.stride(0),
        w_codes.stride(0),
        out.stride(0),
        0 if x_scale.numel() == 1 else 1,
        0 if w_scale.numel() == 1 else 1,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP_M=_GROUP_M,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def _tiles(m: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) by batch size."""
    if m <= 16:
        return 16, 64, 128, 4, 4
    if m <= 64:
        return 64, 64, 128, 4, 4
    return 128, 128, 64, 8, 3
