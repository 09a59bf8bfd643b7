"""Varlen prefill attention over the paged cache, flash-attention style, with a cached prefix.

Grid: (query tile, kv head). A tile holds BLOCK_Q tokens of one sequence
times every query head of the kv head's group (rows are (token, head) pairs),
so each K/V tile is loaded once per group. The grid is sized from the packed
token count alone (T // BLOCK_Q + S tiles always cover every sequence), so no
device sync is needed to learn the longest query; each program finds its
sequence by binary search over query_start_loc and surplus programs exit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cairn.kernels.triton_ops.attention_tile import LOG2E, PREFILL_BATCH_ARGS, attend_tiles, dot_precision

# Best of a sweep on an H200 at head_dim 128, GQA group 4 (bench/results/kernels.json).
_BLOCK_M = 128
_BLOCK_N = 64
_NUM_WARPS = 4
_NUM_STAGES = 3


@triton.jit
def _find_sequence(query_start_loc_ptr, tile, n_seqs, BLOCK_Q: tl.constexpr):
    """The last sequence s whose first tile index, query_start_loc[s] // BLOCK_Q + s, is <= tile."""
    lo = 0
    hi = n_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_tile = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_tile <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit(do_not_specialize=PREFILL_BATCH_ARGS)
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    out_ptr,
    scale_log2e,
    n_seqs,
    stride_qt,
    stride_qh,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    stride_bt,
    stride_ot,
    stride_oh,
    block_size,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_sequence(query_start_loc_ptr, tile, n_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    tile_q = (tile - (q_start // BLOCK_Q + seq)) * BLOCK_Q
    if tile_q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_start = seq_len - q_len

    rows = tl.arange(0, BLOCK_Q * BLOCK_G)
    tokens = tile_q + rows // BLOCK_G
    groups = rows % BLOCK_G
    heads = kv_head * GROUP + groups
    row_mask = (tokens < q_len) & (groups < GROUP)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    token_idx = (q_start + tokens).to(tl.int64)
    q = tl.load(
        q_ptr + token_idx[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :],
        mask=row_mask[:, None] & dim_mask[None, :],
        other=0.0,
    )
    query_pos = context_start + tokens

    acc = tl.zeros([BLOCK_Q * BLOCK_G, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_Q * BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q * BLOCK_G], dtype=tl.float32)
    k_head_ptr = k_cache_ptr + kv_head * stride_k_head
    v_head_ptr = v_cache_ptr + kv_head * stride_v_head
    table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    # Keys before the tile's first query position are visible to every row:
    # whole tiles of them skip the causal mask.
    unmasked_end = (context_start + tile_q) // BLOCK_N * BLOCK_N
    kv_end = context_start + tl.minimum(tile_q + BLOCK_Q, q_len)
    acc, m_i, l_i = attend_tiles(
        acc,
        m_i,
        l_i,
        q,
        query_pos,
        k_head_ptr,
        v_head_ptr,
        table_ptr,
        0,
        unmasked_end,
        block_size,
        stride_k_block,
        stride_k_slot,
        stride_v_block,
        stride_v_slot,
        dims,
        dim_mask,
        scale_log2e,
        BLOCK_N,
        False,
        DOT_PRECISION,
    )
    acc, m_i, l_i = attend_tiles(
        acc,
        m_i,
        l_i,
        q,
        query_pos,
        k_head_ptr,
        v_head_ptr,
        table_ptr,
        unmasked_end,
        kv_end,
        block_size,
        stride_k_block,
        stride_k_slot,
        stride_v_block,
        stride_v_slot,
        dims,
        dim_mask,
        scale_log2e,
        BLOCK_N,
        True,
        DOT_PRECISION,
    )
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    out_ptrs = out_ptr + token_idx[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    n_tokens, n_heads, head_dim = q.shape
    n_kv_heads = k_cache.shape[2]
    group = n_heads // n_kv_heads
    n_seqs = seq_lens.shape[0]
    q = q if q.stride(-1) == 1 else q.contiguous()
    out = torch.empty_like(q)
    if n_tokens == 0:
        return out
    block_g = triton.next_power_of_2(group)
    block_q = max(_BLOCK_M // block_g, 1)
    grid = (n_tokens // block_q + n_seqs, n_kv_heads)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        block_tables,
        query_start_loc,
        seq_lens,
        out,
        scale * LOG2E,
        n_seqs,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        k_cache.shape[1],
        GROUP=group,
        BLOCK_G=block_g,
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_Q=block_q,
        BLOCK_N=_BLOCK_N,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=_NUM_WARPS,
        num_stages=_NUM_STAGES,
    )
    return out
