"""Attention over the paged KV cache: decode (one query per sequence) and varlen prefill.

These are the CPU engine's attention and the oracle for the Triton kernels.
Each sequence's blocks are gathered once into contiguous K/V and handed to
`scaled_dot_product_attention` in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    batch = q.shape[0]
    num_blocks, block_size = k_cache.shape[:2]
    max_len = int(seq_lens.max()) if batch else 0
    if max_len == 0:
        return torch.zeros_like(q)
    num_table_blocks = -(-max_len // block_size)
    # Entries past a sequence's end may be stale or padding: clamp so the
    # gather stays in bounds; the mask below hides whatever they point at.
    tables = block_tables[:, :num_table_blocks].long().clamp(0, num_blocks - 1)
    keys, values = _gather(k_cache, tables), _gather(v_cache, tables)
    positions = torch.arange(keys.shape[2], device=q.device)
    visible = positions[None, :] < seq_lens[:, None]
    # Slots past a sequence's end hold whatever the cache had, NaN included;
    # zero them, since a masked-out probability of 0 times NaN is still NaN.
    hidden = ~visible[:, None, :, None]
    keys, values = keys.masked_fill(hidden, 0.0), values.masked_fill(hidden, 0.0)
    # An empty row (CUDA-graph padding) attends uniformly over zeroed slots and
    # so yields zeros instead of the NaN of an all-masked softmax.
    mask = visible | (seq_lens == 0)[:, None]
    out = F.scaled_dot_product_attention(
        q.float().unsqueeze(2), keys, values, attn_mask=mask[:, None, None, :], scale=scale, enable_gqa=True
    )
    return out.squeeze(2).to(q.dtype)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    block_size = k_cache.shape[1]
    out = torch.zeros_like(q)
    starts = query_start_loc.tolist()
    for seq, context_len in enumerate(seq_lens.tolist()):
        q_start, q_end = starts[seq], starts[seq + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        table = block_tables[seq : seq + 1, : -(-context_len // block_size)].long()
        keys = _gather(k_cache, table)[:, :, :context_len]
        values = _gather(v_cache, table)[:, :, :context_len]
        # The chunk is the last q_len positions of the context: query i sits at
        # position context_len - q_len + i and sees every key up to it.
        query_pos = torch.arange(q_len, device=q.device) + (context_len - q_len)
        mask = torch.arange(context_len, device=q.device)[None, :] <= query_pos[:, None]
        chunk = q[q_start:q_end].float().transpose(0, 1).unsqueeze(0)
        attn = F.scaled_dot_product_attention(
            chunk, keys, values, attn_mask=mask, scale=scale, enable_gqa=True
        )
        out[q_start:q_end] = attn[0].transpose(0, 1).to(q.dtype)
    return out


def _gather(cache: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """[batch, num_table_blocks] block ids -> contiguous fp32 [batch, num_kv_heads, tokens, head_dim]."""
    blocks = cache[tables]
    batch, num_table_blocks, block_size = blocks.shape[:3]
    return blocks.reshape(batch, num_table_blocks * block_size, *blocks.shape[3:]).transpose(1, 2).float()
