"""Paged decode and prefill attention reading an INT8 or FP8 KV cache.

The same flash-decoding and flash-attention schedules as `decode.py` and
`prefill.py`; only the key/value tiles differ: codes are loaded (a quarter
or half of the bytes of a 16-bit cache) and multiplied by their scale before
the dot products. A scale stride of 0 broadcasts a static per-tensor scale;
dynamic scales are read per (slot, head) through the same block table.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cairn.kernels.triton_ops.attention_tile import (
    DECODE_BATCH_ARGS,
    LOG2E,
    PREFILL_BATCH_ARGS,
    dot_precision,
)
from cairn.kernels.triton_ops.decode import _default_num_splits, _merge_splits_kernel
from cairn.kernels.triton_ops.prefill import _find_sequence

_DECODE_BLOCK_N = 64
_PREFILL_BLOCK_M = 64
_PREFILL_BLOCK_N = 64
_MIN_ROWS = 16


@triton.jit
def _load_dequantized(
    cache_head_ptr, scale_head_ptr, blocks, slots, stride_block, stride_slot,
    stride_scale_block, stride_scale_slot, dims, load_mask, valid,
):  # fmt: skip
    """fp32 values of a tile of keys or values: codes times their (per-slot or broadcast) scale."""
    codes = tl.load(
        cache_head_ptr + (blocks * stride_block + slots * stride_slot)[:, None] + dims[None, :],
        mask=load_mask,
        other=0.0,
    )
    scale = tl.load(
        scale_head_ptr + blocks * stride_scale_block + slots * stride_scale_slot, mask=valid, other=0.0
    )
    return codes.to(tl.float32) * scale[:, None]


@triton.jit
def _attend_quant_tiles(
    acc, m_i, l_i, q, query_pos,
    k_head_ptr, v_head_ptr, ks_head_ptr, vs_head_ptr, block_table_ptr, start, end, block_size,
    stride_block, stride_slot, stride_scale_block, stride_scale_slot,
    dims, dim_mask, scale_log2e,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Online softmax over keys [start, end) visible to each row (key_pos <= query_pos)."""
    for start_n in range(start, end, BLOCK_N):
        key_pos = start_n + tl.arange(0, BLOCK_N)
        valid = key_pos < end
        blocks = tl.load(block_table_ptr + key_pos // block_size, mask=valid, other=0).to(tl.int64)
        slots = key_pos % block_size
        load_mask = valid[:, None] & dim_mask[None, :]
        k = _load_dequantized(
            k_head_ptr, ks_head_ptr, blocks, slots, stride_block, stride_slot,
            stride_scale_block, stride_scale_slot, dims, load_mask, valid,
        ).to(q.dtype)  # fmt: skip
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2e
        visible = valid[None, :] & (key_pos[None, :] <= query_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        # A row that has seen no visible key yet keeps m at -inf; exp2 of (-inf) - (-inf) is NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(scores - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = _load_dequantized(
            v_head_ptr, vs_head_ptr, blocks, slots, stride_block, stride_slot,
            stride_scale_block, stride_scale_slot, dims, load_mask, valid,
        ).to(q.dtype)  # fmt: skip
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit(do_not_specialize=DECODE_BATCH_ARGS)
def _decode_quant_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, block_tables_ptr, seq_lens_ptr,
    out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, scale_log2e,
    stride_qb, stride_qh, stride_block, stride_slot, stride_head,
    stride_scale_block, stride_scale_slot, stride_scale_head, stride_bt, stride_ob, stride_oh,
    block_size, n_heads,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    groups = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + groups
    row_mask = groups < GROUP
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    q = tl.load(
        q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
        mask=row_mask[:, None] & dim_mask[None, :],
        other=0.0,
    )
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    query_pos = tl.zeros([BLOCK_G], dtype=tl.int32) + seq_len - 1
    acc, m_i, l_i = _attend_quant_tiles(
        acc, m_i, l_i, q, query_pos,
        k_cache_ptr + kv_head * stride_head, v_cache_ptr + kv_head * stride_head,
        k_scale_ptr + kv_head * stride_scale_head, v_scale_ptr + kv_head * stride_scale_head,
        block_tables_ptr + seq * stride_bt, start, end, block_size,
        stride_block, stride_slot, stride_scale_block, stride_scale_slot,
        dims, dim_mask, scale_log2e, BLOCK_N, DOT_PRECISION,
    )  # fmt: skip
    store_mask = row_mask[:, None] & dim_mask[None, :]
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        out_ptrs = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        part = (seq * n_heads + heads) * NUM_SPLITS + split
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=store_mask)
        tl.store(part_m_ptr + part, m_i, mask=row_mask)
        tl.store(part_l_ptr + part, l_i, mask=row_mask)


@triton.jit(do_not_specialize=PREFILL_BATCH_ARGS)
def _prefill_quant_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, block_tables_ptr, query_start_loc_ptr,
    seq_lens_ptr, out_ptr, scale_log2e, n_seqs,
    stride_qt, stride_qh, stride_block, stride_slot, stride_head,
    stride_scale_block, stride_scale_slot, stride_scale_head, stride_bt, stride_ot, stride_oh, block_size,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
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
    acc = tl.zeros([BLOCK_Q * BLOCK_G, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_Q * BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q * BLOCK_G], dtype=tl.float32)
    kv_end = context_start + tl.minimum(tile_q + BLOCK_Q, q_len)
    acc, m_i, l_i = _attend_quant_tiles(
        acc, m_i, l_i, q, context_start + tokens,
        k_cache_ptr + kv_head * stride_head, v_cache_ptr + kv_head * stride_head,
        k_scale_ptr + kv_head * stride_scale_head, v_scale_ptr + kv_head * stride_scale_head,
        block_tables_ptr + seq.to(tl.int64) * stride_bt, 0, kv_end, block_size,
        stride_block, stride_slot, stride_scale_block, stride_scale_slot,
        dims, dim_mask, scale_log2e, BLOCK_N, DOT_PRECISION,
    )  # fmt: skip
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    out_ptrs = out_ptr + token_idx[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def _scale_strides(scale: torch.Tensor) -> tuple[int, int, int]:
    """(block, slot, head) strides of a scale tensor; zeros broadcast a static one."""
    if scale.numel() == 1:
        return 0, 0, 0
    return scale.stride(0), scale.stride(1), scale.stride(2)


def paged_decode_attention_quant(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """See `cairn.kernels.paged_decode_attention_quant`; `num_splits` as in `decode.py`."""
    batch, n_heads, head_dim = q.shape
    n_kv_heads = k_cache.shape[2]
    group = n_heads // n_kv_heads
    q = q if q.stride(-1) == 1 else q.contiguous()
    out = torch.empty_like(q)
    if batch == 0:
        return out
    if num_splits is None:
        num_splits = _default_num_splits(batch * n_kv_heads, q.device)
    if num_splits & (num_splits - 1):
        raise ValueError(f"num_splits must be a power of two, got {num_splits}")
    if num_splits > 1:
        part_acc = torch.empty((batch, n_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        part_m = torch.empty((batch, n_heads, num_splits), dtype=torch.float32, device=q.device)
        part_l = torch.empty_like(part_m)
    else:
        part_acc = part_m = part_l = out
    block_d = triton.next_power_of_2(head_dim)
    _decode_quant_kernel[(batch, n_kv_heads, num_splits)](
        q, k_cache, v_cache, k_scale, v_scale, block_tables, seq_lens,
        out, part_acc, part_m, part_l, scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        *_scale_strides(k_scale), block_tables.stride(0), out.stride(0), out.stride(1),
        k_cache.shape[1], n_heads,
        GROUP=group,
        BLOCK_G=max(triton.next_power_of_2(group), _MIN_ROWS),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_N=_DECODE_BLOCK_N,
        NUM_SPLITS=num_splits,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=4,
        num_stages=2,
    )  # fmt: skip
    if num_splits > 1:
        _merge_splits_kernel[(batch, n_heads)](
            part_acc, part_m, part_l, out, out.stride(0), out.stride(1), n_heads,
            HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=num_splits, num_warps=4,
        )  # fmt: skip
    return out


def prefill_attention_quant(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """See `cairn.kernels.prefill_attention_quant`."""
    n_tokens, n_heads, head_dim = q.shape
    n_kv_heads = k_cache.shape[2]
    group = n_heads // n_kv_heads
    n_seqs = seq_lens.shape[0]
    q = q if q.stride(-1) == 1 else q.contiguous()
    out = torch.empty_like(q)
    if n_tokens == 0:
        return out
    block_g = triton.next_power_of_2(group)
    block_q = max(_PREFILL_BLOCK_M // block_g, 1)
    _prefill_quant_kernel[(n_tokens // block_q + n_seqs, n_kv_heads)](
        q, k_cache, v_cache, k_scale, v_scale, block_tables, query_start_loc, seq_lens, out,
        scale * LOG2E, n_seqs,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        *_scale_strides(k_scale), block_tables.stride(0), out.stride(0), out.stride(1), k_cache.shape[1],
        GROUP=group,
        BLOCK_G=block_g,
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_Q=block_q,
        BLOCK_N=_PREFILL_BLOCK_N,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=4,
        num_stages=2,
    )  # fmt: skip
    return out
