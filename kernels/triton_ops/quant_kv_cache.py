"""Scatter of this step's K/V into an INT8 or FP8 paged cache: one program per token, all heads.

Static scales (one element) divide every value; dynamic ones are computed per
(token, head) from the head's absolute maximum and stored beside its codes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cairn.kernels.reference.quant_codes import FP8_DTYPE, code_max
from cairn.kernels.triton_ops.quant_codes import MIN_SCALE, to_codes


@triton.jit
def _store_quantized_heads(
    src_ptr,
    dst_ptr,
    scale_ptr,
    stride_src_head,
    stride_dst_head,
    n_heads,
    head_dim,
    QMAX: tl.constexpr,
    STATIC: tl.constexpr,
    IS_FP8: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    head_mask = heads < n_heads
    mask = head_mask[:, None] & (dims[None, :] < head_dim)
    values = tl.load(src_ptr + heads[:, None] * stride_src_head + dims[None, :], mask=mask, other=0.0)
    values = values.to(tl.float32)
    # Divisions round to nearest (a GPU's `/` is approximate), so codes match the reference exactly.
    if STATIC:
        codes = to_codes(tl.math.div_rn(values, tl.load(scale_ptr)), IS_FP8)
    else:
        scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(values), axis=1), QMAX), MIN_SCALE)
        tl.store(scale_ptr + heads, scale, mask=head_mask)
        codes = to_codes(tl.math.div_rn(values, scale[:, None]), IS_FP8)
    tl.store(dst_ptr + heads[:, None] * stride_dst_head + dims[None, :], codes, mask=mask)


@triton.jit
def _write_kv_quant_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    slot_mapping_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    stride_scale_block,
    stride_scale_slot,
    block_size,
    n_heads,
    head_dim,
    QMAX: tl.constexpr,
    STATIC: tl.constexpr,
    IS_FP8: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // block_size
    offset = slot % block_size
    cache_at = block * stride_cache_block + offset * stride_cache_slot
    scale_at = block * stride_scale_block + offset * stride_scale_slot
    _store_quantized_heads(
        k_ptr + token * stride_kt,
        k_cache_ptr + cache_at,
        k_scale_ptr + scale_at,
        stride_kh,
        stride_cache_head,
        n_heads,
        head_dim,
        QMAX,
        STATIC,
        IS_FP8,
        BLOCK_H,
        BLOCK_D,
    )
    _store_quantized_heads(
        v_ptr + token * stride_vt,
        v_cache_ptr + cache_at,
        v_scale_ptr + scale_at,
        stride_vh,
        stride_cache_head,
        n_heads,
        head_dim,
        QMAX,
        STATIC,
        IS_FP8,
        BLOCK_H,
        BLOCK_D,
    )


def write_kv_cache_quant(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """See `cairn.kernels.write_kv_cache_quant`. K and V caches (and scales) share one layout."""
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    n_heads, head_dim = k.shape[1], k.shape[2]
    static = k_scale.numel() == 1
    if k.shape[0] == 0:
        return
    _write_kv_quant_kernel[(k.shape[0],)](
        k,
        v,
        k_cache,
        v_cache,
        k_scale,
        v_scale,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        0 if static else k_scale.stride(0),
        0 if static else k_scale.stride(1),
        k_cache.shape[1],
        n_heads,
        head_dim,
        QMAX=code_max(k_cache.dtype),
        STATIC=static,
        IS_FP8=k_cache.dtype == FP8_DTYPE,
        BLOCK_H=triton.next_power_of_2(n_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
        num_warps=4,
    )
