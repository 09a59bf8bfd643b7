"""Scatter of this step's K/V into an INT8 or FP8 paged cache, quantizing on the way.

A scale tensor of one element is a static per-tensor scale (calibrated); a
`[num_blocks, block_size, num_kv_heads]` one holds dynamic scales, one per
token and head, written here next to the codes they belong to.
"""

from __future__ import annotations

import torch

from cairn.kernels.reference.quant_codes import scale_for, to_codes


def write_kv_cache_quant(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    valid = slot_mapping >= 0
    if not bool(valid.all()):
        k, v, slot_mapping = k[valid], v[valid], slot_mapping[valid]
    slot_mapping = slot_mapping.long()
    for values, cache, scale in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        values = values.float()
        if scale.numel() == 1:
            divisor = scale.float()
        else:
            per_head = scale_for(values.abs().amax(dim=-1), cache.dtype)
            scale.view(-1, scale.shape[-1]).index_copy_(0, slot_mapping, per_head)
            divisor = per_head.unsqueeze(-1)
        codes = to_codes(values / divisor, cache.dtype)
        # Through bytes: index_copy_ has no CPU kernel for float8.
        flat = cache.view(torch.uint8).view(-1, *cache.shape[2:])
        flat.index_copy_(0, slot_mapping, codes.view(torch.uint8))


def dequantize_blocks(cache: torch.Tensor, scale: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """fp32 values of cache blocks `blocks` ([n]) -> `[n, block_size, num_kv_heads, head_dim]`."""
    codes = cache[blocks].float()
    if scale.numel() == 1:
        return codes * scale.float()
    return codes * scale[blocks].float().unsqueeze(-1)
