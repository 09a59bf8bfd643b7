"""This step's q/k/v after the fused projection: bias, rotary, and the KV-cache store."""

from __future__ import annotations

import torch

from cairn.kernels.reference.kv_cache import write_kv_cache
from cairn.kernels.reference.rotary import apply_rotary


def rotary_and_cache(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    rope_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    n_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    tokens = qkv.shape[0]
    if bias is not None:
        qkv = qkv + bias
    q, k, v = qkv.view(tokens, -1, head_dim).split(
        (qkv.shape[1] // head_dim - 2 * n_kv_heads, n_kv_heads, n_kv_heads), dim=1
    )
    q, k = apply_rotary(q, k, positions, rope_cache)
    write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    return q.contiguous()
