"""The physical paged KV cache and how many blocks of it fit in memory.

One allocation holds every layer's K and V, `[layers, 2, num_blocks,
block_size, num_kv_heads, head_dim]`, so a block copy is one indexing op for
all layers; each layer sees its K and V as `[num_blocks, block_size,
num_kv_heads, head_dim]` views. Block ids are the scheduler's: the worker
never allocates them, it only checks they are in range.
"""

from __future__ import annotations

import torch

from cairn.common.errors import ResourceExhausted
from cairn.services.worker.models import ModelConfig


def block_bytes(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes across all layers, K and V."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * element


def accelerator_kv_budget(device: torch.device, utilization: float, peak_bytes: int) -> int:
    """Bytes left for KV blocks: `utilization` of the device's memory, less the
    peak torch allocation of a full-size forward and whatever torch does not
    account for (CUDA context, other processes)."""
    module = torch.get_device_module(device)
    free, total = module.mem_get_info(device)
    outside_torch = total - free - module.memory_reserved(device)
    return int(total * utilization) - peak_bytes - outside_torch


def num_blocks_for(budget_bytes: int, config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    num_blocks = budget_bytes // block_bytes(config, block_size, dtype)
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
            dtype=dtype,
            device=device,
        )
        self.layers = [(layer[0], layer[1]) for layer in self.storage]

    @property
    def nbytes(self) -> int:
        return self.storage.nbytes

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy block src to block dst in every layer, K and V."""
        src = torch.tensor([s for s, _ in pairs], device=self.storage.device)
        dst = torch.tensor([d for _, d in pairs], device=self.storage.device)
        self.storage[:, :, dst] = self.storage[:, :, src]
