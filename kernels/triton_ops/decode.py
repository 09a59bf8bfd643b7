"""Paged decode attention, flash-decoding style.

Grid: (sequence, kv head, context split). A program loads the query rows of
every query head that shares its kv head, so each K/V tile is read once per
group. With few (sequence, kv head) pairs, e.g. batch 1, the context is split
across programs to fill the GPU; the last split of a (sequence, kv head) to
finish merges the partial softmax states, so decode attention is always one
launch, and a context of one key tile runs in a single split with no merge.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from cairn.kernels.triton_ops.attention_tile import DECODE_BATCH_ARGS, LOG2E, attend_tiles, dot_precision
from cairn.kernels.triton_ops.scratch import scratch

# Best of a sweep on an H200 at head_dim 128, GQA group 4 (bench/results/kernels.json).
_BLOCK_N = 128
_NUM_WARPS = 4
_NUM_STAGES = 2
_MAX_SPLITS = 64
# tl.dot needs at least 16 rows; the spare rows of a small group are masked.
_MIN_ROWS = 16


@triton.jit(do_not_specialize=DECODE_BATCH_ARGS)
def _decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    out_ptr,
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    arrivals_ptr,
    scale_log2e,
    stride_qb,
    stride_qh,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    stride_bt,
    stride_ob,
    stride_oh,
    block_size,
    n_heads,
    n_kv_heads,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    # Splits follow each sequence's own length in whole key tiles, so a short
    # context occupies few splits (one below a tile) and the rest exit at once.
    split_len = tl.maximum(tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N), 1) * BLOCK_N
    num_active = tl.maximum(tl.cdiv(seq_len, split_len), 1)
    if split >= num_active:
        return
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
    acc, m_i, l_i = attend_tiles(
        acc,
        m_i,
        l_i,
        q,
        query_pos,
        k_cache_ptr + kv_head * stride_k_head,
        v_cache_ptr + kv_head * stride_v_head,
        block_tables_ptr + seq * stride_bt,
        start,
        end,
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
    store_mask = row_mask[:, None] & dim_mask[None, :]
    out_ptrs = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :]
    # Two branches, not one `or`: the first is settled at compile time, so a
    # single-split kernel carries no merge code.
    if NUM_SPLITS == 1:  # noqa: SIM114
        _store_normalized(acc, l_i, out_ptrs, store_mask)
    elif num_active == 1:
        _store_normalized(acc, l_i, out_ptrs, store_mask)
    else:
        part = (seq * n_heads + heads) * NUM_SPLITS + split
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=store_mask)
        tl.store(part_m_ptr + part, m_i, mask=row_mask)
        tl.store(part_l_ptr + part, l_i, mask=row_mask)
        # The last split of this (sequence, kv head) to finish merges them all,
        # so there is no second launch. Every thread's partial is stored before
        # the barrier; the acq_rel atomic publishes them to the merging program
        # (the pattern of CUDA's threadfence reduction), which resets the count.
        tl.debug_barrier()
        arrivals = arrivals_ptr + seq * n_kv_heads + kv_head
        if tl.atomic_add(arrivals, 1, sem="acq_rel", scope="gpu") == num_active - 1:
            _merge_splits(
                part_acc_ptr,
                part_m_ptr,
                part_l_ptr,
                out_ptr + seq * stride_ob + kv_head * GROUP * stride_oh,
                stride_oh,
                (seq * n_heads + kv_head * GROUP) * NUM_SPLITS,
                num_active,
                dims,
                dim_mask,
                GROUP,
                HEAD_DIM,
                NUM_SPLITS,
            )
            tl.atomic_xchg(arrivals, 0, sem="relaxed", scope="gpu")


@triton.jit
def _store_normalized(acc, l_i, out_ptrs, mask):
    # l_i is 0 only when nothing is cached (padding rows): write zeros, not NaN.
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptrs, out.to(out_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _merge_splits(
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    out_ptr,
    stride_oh,
    first_part,
    num_active,
    dims,
    dim_mask,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    """Combines the partial softmax states of a group's heads (out_ptr: its first) over the active splits.

    Every active split saw at least one key, so each partial max is finite.
    Loads bypass L1 (.cg): another multiprocessor wrote the partials.
    """
    splits = tl.arange(0, NUM_SPLITS)
    active = splits < num_active
    for g in tl.static_range(GROUP):
        part = first_part + g * NUM_SPLITS + splits
        m = tl.load(part_m_ptr + part, mask=active, other=float("-inf"), cache_modifier=".cg")
        l_split = tl.load(part_l_ptr + part, mask=active, other=0.0, cache_modifier=".cg")
        weights = tl.exp2(m - tl.max(m, axis=0))
        denom = tl.sum(weights * l_split, axis=0)
        acc = tl.load(
            part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :],
            mask=active[:, None] & dim_mask[None, :],
            other=0.0,
            cache_modifier=".cg",
        )
        out = tl.sum(acc * weights[:, None], axis=0) / denom
        tl.store(out_ptr + g * stride_oh + dims, out.to(out_ptr.dtype.element_ty), mask=dim_mask)


# The quantized-cache decode (quant_attention.py) still merges its splits in this second kernel.
@triton.jit
def _merge_splits_kernel(
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    out_ptr,
    stride_ob,
    stride_oh,
    n_heads,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    part = (seq * n_heads + head) * NUM_SPLITS + tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    m = tl.load(part_m_ptr + part)
    l_split = tl.load(part_l_ptr + part)
    m_max = tl.max(m, axis=0)
    # Every split empty (seq_len 0) leaves m_max at -inf; weights then come out 0.
    weights = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))
    denom = tl.sum(weights * l_split, axis=0)
    acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], mask=dim_mask[None, :], other=0.0)
    out = tl.sum(acc * weights[:, None], axis=0) / tl.where(denom > 0, denom, 1.0)
    out_ptrs = out_ptr + seq * stride_ob + head * stride_oh + dims
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=dim_mask)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """See `cairn.kernels.paged_decode_attention`. `num_splits` (a power of two) overrides the
    context-split heuristic; the heuristic needs no device sync, so the call is CUDA-graph safe."""
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
        # Zeroed once, then reset by each merge: one count per (sequence, kv head).
        arrivals = scratch("decode_arrivals", q.device, batch * n_kv_heads, torch.int32, zeroed=True)
    else:
        part_acc = part_m = part_l = arrivals = out
    _decode_kernel[(batch, n_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        seq_lens,
        out,
        part_acc,
        part_m,
        part_l,
        arrivals,
        scale * LOG2E,
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
        n_heads,
        n_kv_heads,
        GROUP=group,
        BLOCK_G=max(triton.next_power_of_2(group), _MIN_ROWS),
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_N=_BLOCK_N,
        NUM_SPLITS=num_splits,
        DOT_PRECISION=dot_precision(q.dtype),
        num_warps=_NUM_WARPS,
        num_stages=_NUM_STAGES,
    )
    return out


def _default_num_splits(programs: int, device: torch.device) -> int:
    """Enough context splits for about two programs per multiprocessor."""
    processors = _processor_count(device.type, device.index)
    if programs >= processors:
        return 1
    return min(triton.next_power_of_2(triton.cdiv(2 * processors, programs)), _MAX_SPLITS)


@functools.cache
def _processor_count(device_type: str, index: int | None) -> int:
    if device_type == "cuda":
        return torch.cuda.get_device_properties(index).multi_processor_count
    if device_type == "xpu":
        return torch.xpu.get_device_properties(index).gpu_subslice_count
    # The CPU interpreter gains nothing from splitting.
    return 1
