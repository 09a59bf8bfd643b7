"""The physical paged KV cache and how many blocks of it fit in memory.

One allocation holds every layer's K and V, `[layers, 2, num_blocks,
block_size, num_kv_heads, head_dim]`, so a block copy is one indexing op for
all layers; each layer sees its K and V as `[num_blocks, block_size,
num_kv_heads, head_dim]` views. Block ids are the scheduler's: the worker
never allocates them, it only checks they are in range.

A quantized cache (`KVCacheQuant`) holds INT8/FP8 codes and hands each layer
`(k, v, k_scale, v_scale)`: static per-tensor scales, or dynamic ones
`[num_blocks, block_size, num_kv_heads]` allocated beside the codes.

A rank of a tensor-parallel replica caches only the KV heads its attention
heads read (`rank_cache_config`); every rank has the same block count, so the
scheduler's block ids mean the same slots on all of them.
"""

from __future__ import annotations

import dataclasses

import torch

from cairn.common.errors import ResourceExhausted
from cairn.services.worker.models import ModelConfig
from cairn.services.worker.models.parallel import kv_heads_per_rank
from cairn.services.worker.quantization import KVCacheQuant


def rank_cache_config(config: ModelConfig, tp_size: int) -> ModelConfig:
    """`config` as the KV cache of one rank of `tp_size` sees it: with that rank's KV heads."""
    if tp_size == 1:
        return config
    return dataclasses.replace(config, num_kv_heads=kv_heads_per_rank(config.num_kv_heads, tp_size))


def block_bytes(
    config: ModelConfig, block_size: int, dtype: torch.dtype, quant: KVCacheQuant | None = None
) -> int:
    """Bytes one block takes across all layers, K and V (and their dynamic scales)."""
    element = torch.empty((), dtype=dtype if quant is None else quant.dtype).element_size()
    codes = 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * element
    return codes + (0 if quant is None else quant.scale_bytes_per_block(config, block_size))


def accelerator_kv_budget(device: torch.device, utilization: float, peak_bytes: int) -> int:
    """Bytes left for KV blocks: `utilization` of the device's memory, less the
    peak torch allocation of a full-size forward and whatever torch does not
    account for (CUDA context, other processes)."""
    module = torch.get_device_module(device)
    free, total = module.mem_get_info(device)
    outside_torch = total - free - module.memory_reserved(device)
    return int(total * utilization) - peak_bytes - outside_torch


def num_blocks_for(
    budget_bytes: int,
    config: ModelConfig,
    block_size: int,
    dtype: torch.dtype,
    quant: KVCacheQuant | None = None,
) -> int:
    num_blocks = budget_bytes // block_bytes(config, block_size, dtype, quant)
    if num_blocks < 1:
        raise ResourceExhausted(
            f"no memory left for the KV cache ({budget_bytes / 2**30:.2f} GiB after weights and "
            "activations): raise gpu_memory_utilization or lower max_num_batched_tokens / max_num_seqs"
        )
    return int(num_blocks)


class KVCache:
    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        quant: KVCacheQuant | None = None,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Zeroed, not empty: attention multiplies masked slots by a zero
        # probability, and NaN garbage there would still poison the sum.
        self.storage = torch.zeros(
            config.num_layers,
            2,
            num_blocks,
            block_size,
            config.num_kv_heads,
            config.head_dim,
            dtype=dtype if quant is None else quant.dtype,
            device=device,
        )
        self.scales = None
        if quant is None:
            self.layers = [(layer[0], layer[1]) for layer in self.storage]
        elif quant.dynamic:
            shape = (config.num_layers, 2, num_blocks, block_size, config.num_kv_heads)
            self.scales = torch.zeros(shape, dtype=torch.float32, device=device)
            self.layers = [(c[0], c[1], s[0], s[1]) for c, s in zip(self.storage, self.scales, strict=True)]
        else:
            self.layers = [
                (c[0], c[1], *scales) for c, scales in zip(self.storage, quant.static_scales, strict=True)
            ]

    @property
    def nbytes(self) -> int:
        return self.storage.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy block src to block dst in every layer, K and V."""
        src = torch.tensor([s for s, _ in pairs], device=self.storage.device)
        dst = torch.tensor([d for _, d in pairs], device=self.storage.device)
        self.storage[:, :, dst] = self.storage[:, :, src]
        if self.scales is not None:
            self.scales[:, :, dst] = self.scales[:, :, src]
