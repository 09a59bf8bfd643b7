"""Weight-only INT4/INT8 GEMM (W4A16, W8A16): codes are dequantized in registers, tile by tile.

`y = x @ W.T (+ bias)` with W packed as in `cairn.kernels.quant_layout`.
BLOCK_K divides the group size, so a K tile has one scale (and zero) row,
loaded once per tile. Decode-sized batches are memory-bound and too few
output tiles to fill the GPU: the K dimension is then split across programs
(fp32 partial sums, added afterwards), the way split-K GEMV kernels do.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cairn.kernels.quant_layout import pack_factor
from cairn.kernels.triton_ops.attention_tile import dot_precision
from cairn.kernels.triton_ops.decode import _processor_count

_MAX_SPLIT_K = 16


@triton.jit
def _weight_only_gemm_kernel(
    x_ptr,
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_qk,
    stride_sg,
    stride_zg,
    stride_om,
    stride_split,
    group_size,
    BITS: tl.constexpr,
    HAS_ZERO: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    PACK: tl.constexpr = 32 // BITS
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    k_per_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + rows[:, None].to(tl.int64) * stride_xm + ks[None, :],
            mask=row_mask[:, None],
            other=0.0,
        )
        words = tl.load(
            qweight_ptr + (ks // PACK)[:, None].to(tl.int64) * stride_qk + cols[None, :],
            mask=col_mask[None, :],
            other=0,
        )
        codes = ((words >> ((ks % PACK) * BITS)[:, None]) & ((1 << BITS) - 1)).to(tl.float32)
        group = k0 // group_size
        scale = tl.load(scales_ptr + group * stride_sg + cols, mask=col_mask, other=0.0).to(tl.float32)
        if HAS_ZERO:
            zero = tl.load(zeros_ptr + group * stride_zg + cols, mask=col_mask, other=0.0).to(tl.float32)
            weight = (codes - zero[None, :]) * scale[None, :]
        else:
            weight = (codes - (1 << (BITS - 1))) * scale[None, :]
        acc += tl.dot(x, weight.to(x.dtype), input_precision=DOT_PRECISION)
    out_mask = row_mask[:, None] & col_mask[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        out_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        out_ptrs = out_ptr + pid_k * stride_split + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
        tl.store(out_ptrs, acc, mask=out_mask)


def weight_only_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None = None,
    split_k: int | None = None,
) -> torch.Tensor:
    """See `cairn.kernels.weight_only_gemm`. `split_k` overrides the heuristic (tests)."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    m, k = x.shape
    n = qweight.shape[1]
    if qweight.shape[0] * pack_factor(bits) != k:
        raise ValueError(f"packed weight covers {qweight.shape[0] * pack_factor(bits)} inputs, x has {k}")
    block_m, block_n, block_k, num_warps, num_stages = _tiles(m, group_size)
    grid_mn = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    if split_k is None:
        split_k = _default_split_k(grid_mn, k // block_k, x.device)
    if split_k > 1:
        out = torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
        stride_split = out.stride(0)
    else:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
        stride_split = 0
    if m:
        _weight_only_gemm_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n), split_k)](
            x,
            qweight,
            scales,
            scales if zeros is None else zeros,
            scales if bias is None else bias,
            out,
            m,
            n,
            k,
            x.stride(0),
            qweight.stride(0),
            scales.stride(0),
            0 if zeros is None else zeros.stride(0),
            out.stride(-2),
            stride_split,
            group_size,
            BITS=bits,
            HAS_ZERO=zeros is not None,
            HAS_BIAS=bias is not None,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            SPLIT_K=split_k,
            DOT_PRECISION=dot_precision(x.dtype),
            num_warps=num_warps,
            num_stages=num_stages,
        )
    if split_k == 1:
        return out
    total = out.sum(dim=0)
    if bias is not None:
        total += bias.float()
    return total.to(x.dtype)


def supports(k: int, group_size: int) -> bool:
    """Whether the kernel takes this shape: tl.dot needs K tiles of at least 16 inside one group."""
    return group_size % 16 == 0 and k % group_size == 0


def _tiles(m: int, group_size: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) by batch size; BLOCK_K divides the group."""
    block_k = 128
    while group_size % block_k:
        block_k //= 2
    if m <= 16:
        return 16, 64, block_k, 4, 3
    if m <= 64:
        return 64, 64, min(block_k, 64), 4, 3
    return 128, 128, min(block_k, 64), 8, 3


def _default_split_k(output_tiles: int, k_tiles: int, device: torch.device) -> int:
    """Enough K splits for about two programs per multiprocessor, each with at least four K tiles."""
    processors = _processor_count(device.type, device.index)
    if output_tiles >= processors:
        return 1
    wanted = triton.next_power_of_2(triton.cdiv(2 * processors, output_tiles))
    return max(1, min(wanted, _MAX_SPLIT_K, k_tiles // 4))
