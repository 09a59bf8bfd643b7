"""Scatter of this step's K/V into the paged cache: one program per token."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_heads(
    src_ptr, dst_ptr, stride_sh, stride_dh, n_heads, head_dim, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr
):
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < n_heads) & (dims < head_dim)
    values = tl.load(src_ptr + heads * stride_sh + dims, mask=mask)
    tl.store(dst_ptr + heads * stride_dh + dims, values.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _write_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kc_block,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_block,
    stride_vc_slot,
    stride_vc_head,
    block_size,
    n_heads,
    head_dim,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    # Negative slots are padding tokens (e.g. in a CUDA-graph batch): nothing to store.
    if slot < 0:
        return
    block = slot // block_size
    offset = slot % block_size
    _store_heads(
        k_ptr + token * stride_kt,
        k_cache_ptr + block * stride_kc_block + offset * stride_kc_slot,
        stride_kh,
        stride_kc_head,
        n_heads,
        head_dim,
        BLOCK_H,
        BLOCK_D,
    )
    _store_heads(
        v_ptr + token * stride_vt,
        v_cache_ptr + block * stride_vc_block + offset * stride_vc_slot,
        stride_vh,
        stride_vc_head,
        n_heads,
        head_dim,
        BLOCK_H,
        BLOCK_D,
    )


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    n_heads, head_dim = k.shape[1], k.shape[2]
    _write_kv_kernel[(k.shape[0],)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        k_cache.shape[1],
        n_heads,
        head_dim,
        BLOCK_H=triton.next_power_of_2(n_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
        num_warps=4,
    )
