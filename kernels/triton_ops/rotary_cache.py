"""This step's q/k/v after the fused projection, in one launch: bias, rotary, and the KV-cache store.

One program per token: q and k heads get the projection's bias and the NeoX
rotation in fp32, q goes to a new [T, Hq, D] tensor, and k (rotated) and v go
straight to the token's slot of the paged cache. Neither k nor v is written
anywhere else: attention reads them back from the cache.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _biased(x_ptr, bias_ptr, offsets, mask, HAS_BIAS: tl.constexpr):
    """Loads x (+ bias, rounded to x's dtype as a projection with a bias epilogue would) in fp32."""
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    if HAS_BIAS:
        summed = x.to(tl.float32) + tl.load(bias_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        x = summed.to(x_ptr.dtype.element_ty)
    return x.to(tl.float32)


@triton.jit
def _rotate_heads(
    x_ptr,
    bias_ptr,
    out_ptr,
    stride_out_h,
    n_heads,
    cos,
    sin,
    HAS_BIAS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    """Rotates n_heads contiguous heads at x_ptr (+ bias) into out_ptr's heads."""
    half = HEAD_DIM // 2
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < n_heads) & (dims < half)
    first = heads * HEAD_DIM + dims
    x1 = _biased(x_ptr, bias_ptr, first, mask, HAS_BIAS)
    x2 = _biased(x_ptr, bias_ptr, first + half, mask, HAS_BIAS)
    out = out_ptr + heads * stride_out_h + dims
    tl.store(out, (x1 * cos - x2 * sin).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out + half, (x2 * cos + x1 * sin).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_cache_kernel(
    qkv_ptr,
    bias_ptr,
    positions_ptr,
    rope_ptr,
    slot_mapping_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    stride_qkv,
    stride_rope,
    stride_q_out_t,
    stride_q_out_h,
    stride_kc_block,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_block,
    stride_vc_slot,
    stride_vc_head,
    block_size,
    n_q_heads,
    n_kv_heads,
    HAS_BIAS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_QH: tl.constexpr,
    BLOCK_KH: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    half = HEAD_DIM // 2
    position = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)
    row = rope_ptr + position * stride_rope
    cos = tl.load(row + dims, mask=dims < half, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(row + half + dims, mask=dims < half, other=0.0).to(tl.float32)[None, :]
    qkv_row = qkv_ptr + token * stride_qkv
    q_size = n_q_heads * HEAD_DIM
    kv_size = n_kv_heads * HEAD_DIM
    _rotate_heads(
        qkv_row,
        bias_ptr,
        q_out_ptr + token * stride_q_out_t,
        stride_q_out_h,
        n_q_heads,
        cos,
        sin,
        HAS_BIAS,
        HEAD_DIM,
        BLOCK_QH,
        BLOCK_HALF,
    )
    # Negative slots are padding tokens (e.g. in a CUDA-graph batch): their k and v are not stored.
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot >= 0:
        block = slot // block_size
        offset = slot % block_size
        _rotate_heads(
            qkv_row + q_size,
            bias_ptr + q_size,
            k_cache_ptr + block * stride_kc_block + offset * stride_kc_slot,
            stride_kc_head,
            n_kv_heads,
            cos,
            sin,
            HAS_BIAS,
            HEAD_DIM,
            BLOCK_KH,
            BLOCK_HALF,
        )
        heads = tl.arange(0, BLOCK_KH)[:, None]
        all_dims = tl.arange(0, BLOCK_D)[None, :]
        mask = (heads < n_kv_heads) & (all_dims < HEAD_DIM)
        v_offsets = q_size + kv_size + heads * HEAD_DIM + all_dims
        v = _biased(qkv_row, bias_ptr, v_offsets, mask, HAS_BIAS)
        v_row = v_cache_ptr + block * stride_vc_block + offset * stride_vc_slot
        tl.store(v_row + heads * stride_vc_head + all_dims, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def rotary_and_cache(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    rope_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """See `cairn.kernels.rotary_and_cache`."""
    n_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    n_q_heads = qkv.shape[1] // head_dim - 2 * n_kv_heads
    tokens = qkv.shape[0]
    qkv = qkv if qkv.stride(-1) == 1 else qkv.contiguous()
    rope_cache = rope_cache if rope_cache.stride(-1) == 1 else rope_cache.contiguous()
    q = torch.empty((tokens, n_q_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    if tokens == 0:
        return q
    _rotary_cache_kernel[(tokens,)](
        qkv,
        qkv if bias is None else bias,
        positions,
        rope_cache,
        slot_mapping,
        q,
        k_cache,
        v_cache,
        qkv.stride(0),
        rope_cache.stride(0),
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        k_cache.shape[1],
        n_q_heads,
        n_kv_heads,
        HAS_BIAS=bias is not None,
        HEAD_DIM=head_dim,
        BLOCK_QH=triton.next_power_of_2(n_q_heads),
        BLOCK_KH=triton.next_power_of_2(n_kv_heads),
        BLOCK_HALF=triton.next_power_of_2(head_dim // 2),
        BLOCK_D=triton.next_power_of_2(head_dim),
        num_warps=4,
    )
    return q
