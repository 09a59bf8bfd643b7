"""Attention over the paged KV cache for a packed batch of decodes and prefill chunks.

The batch puts its single-token sequences (decodes) first and its multi-token
chunks after them: the decode rows go to the paged decode kernel, the rest to
the varlen prefill kernel, both reading K/V back from the cache this step's
tokens were just written into (`kernels.rotary_and_cache`). A chunk that starts
after cached tokens (chunked prefill, prefix-cache hit) therefore needs nothing
special.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cairn import kernels


@dataclass
class AttentionMetadata:
    # [T] int32 (or int64) cache slot of every token (block_id * block_size + offset); -1 skips the write.
    slot_mapping: torch.Tensor
    # Rows [0, num_decode_tokens) are one-token sequences, one row each.
    num_decode_tokens: int
    # Decode part: [B, max_blocks] int32 block tables and [B] int32 lengths incl. the new token.
    decode_block_tables: torch.Tensor | None = None
    decode_seq_lens: torch.Tensor | None = None
    # Prefill part: [S, max_blocks] int32, [S + 1] int32 query offsets relative to the first
    # prefill row, and [S] int32 lengths (cached prefix + chunk).
    prefill_block_tables: torch.Tensor | None = None
    prefill_query_start_loc: torch.Tensor | None = None
    prefill_seq_lens: torch.Tensor | None = None


def paged_attention(
    q: torch.Tensor, kv_cache: tuple[torch.Tensor, ...], meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """q [T, Hq, D] of this step's tokens, whose K/V are already in the cache -> [T, Hq, D].

    `kv_cache` is (k_cache, v_cache), or (k_cache, v_cache, k_scale, v_scale) for an INT8/FP8 cache.
    """
    k_cache, v_cache, *kv_scales = kv_cache
    # An INT8/FP8 cache carries its scales; its kernels take them bound.
    ops = kernels.QuantizedKV(*kv_scales) if kv_scales else kernels
    num_decodes = meta.num_decode_tokens
    decode = prefill = None
    if num_decodes:
        decode = ops.paged_decode_attention(
            q[:num_decodes], k_cache, v_cache, meta.decode_block_tables, meta.decode_seq_lens, scale
        )
    if num_decodes < q.shape[0]:
        prefill = ops.prefill_attention(
            q[num_decodes:],
            k_cache,
            v_cache,
            meta.prefill_block_tables,
            meta.prefill_query_start_loc,
            meta.prefill_seq_lens,
            scale,
        )
    if decode is None:
        return prefill
    return decode if prefill is None else torch.cat((decode, prefill))
