"""Paged decode and prefill attention over an INT8 or FP8 cache.

The blocks the batch's tables name are dequantized once into a compact fp32
cache and the tables renumbered into it, so the fp32 attention references
run unchanged: the quantized path differs from the plain one only by the
codes' rounding.
"""

from __future__ import annotations

import torch

from cairn.kernels.reference.attention import paged_decode_attention, prefill_attention
from cairn.kernels.reference.quant_kv_cache import dequantize_blocks


def paged_decode_attention_quant(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    keys, values, tables = _dequantized(k_cache, v_cache, k_scale, v_scale, block_tables)
    return paged_decode_attention(q, keys, values, tables, seq_lens, scale)


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
    keys, values, tables = _dequantized(k_cache, v_cache, k_scale, v_scale, block_tables)
    return prefill_attention(q, keys, values, tables, query_start_loc, seq_lens, scale)


def _dequantized(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    block_tables: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Padding entries (-1) and stale ones past a sequence's end become some valid
    # block; the attention references mask whatever they point at.
    ids = block_tables.long().clamp(0, k_cache.shape[0] - 1)
    blocks, tables = torch.unique(ids, return_inverse=True)
    keys = dequantize_blocks(k_cache, k_scale, blocks)
    values = dequantize_blocks(v_cache, v_scale, blocks)
    return keys, values, tables.view_as(ids).to(block_tables.dtype)
