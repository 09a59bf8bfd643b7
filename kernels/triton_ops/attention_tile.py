"""The inner loop shared by the attention kernels: online softmax over key tiles of the paged cache.

Key positions map to the cache through the sequence's block table, one lookup
per key, so any block size works and a tile may span several blocks. Scores
are kept in log2 units (the scale is pre-multiplied by log2(e)) to use exp2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# Arguments describing a step's batch: its sequence count and the alignment of its slices
# of the runner's metadata buffers change from step to step. Left unspecialized, so one
# compiled variant serves every step (specializing compiled new ones mid-serving, ~1 s each).
DECODE_BATCH_ARGS = ["block_tables_ptr", "seq_lens_ptr", "stride_bt"]
PREFILL_BATCH_ARGS = [*DECODE_BATCH_ARGS, "query_start_loc_ptr", "n_seqs"]


def dot_precision(dtype: torch.dtype) -> str:
    # Full fp32 products for fp32 inputs (tf32 would miss fp32 tolerances); ignored for 16-bit inputs.
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def attend_tiles(
    acc,
    m_i,
    l_i,
    q,
    query_pos,
    k_head_ptr,
    v_head_ptr,
    block_table_ptr,
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
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Accumulate keys [start, end) into (acc, m_i, l_i) for the query rows in q.

    MASKED=False is the fast path for tiles every row may see in full: `end` is
    a multiple of BLOCK_N past `start` and lies within the sequence. MASKED=True
    hides keys at or past `end` and keys after each row's `query_pos`.
    """
    for start_n in range(start, end, BLOCK_N):
        key_pos = start_n + tl.arange(0, BLOCK_N)
        if MASKED:
            valid = key_pos < end
            blocks = tl.load(block_table_ptr + key_pos // block_size, mask=valid, other=0).to(tl.int64)
            load_mask = valid[:, None] & dim_mask[None, :]
        else:
            blocks = tl.load(block_table_ptr + key_pos // block_size).to(tl.int64)
            load_mask = dim_mask[None, :]
        slots = key_pos % block_size
        k = tl.load(
            k_head_ptr + (blocks * stride_k_block + slots * stride_k_slot)[:, None] + dims[None, :],
            mask=load_mask,
            other=0.0,
        )
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2e
        if MASKED:
            visible = valid[None, :] & (key_pos[None, :] <= query_pos[:, None])
            scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_head_ptr + (blocks * stride_v_block + slots * stride_v_slot)[:, None] + dims[None, :],
            mask=load_mask,
            other=0.0,
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i
