"""Shared fixtures for the kernel tests.

Without CUDA the Triton kernels run under the interpreter on CPU tensors;
tests/conftest.py sets TRITON_INTERPRET before any suite imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch


@dataclass
class PagedContext:
    """Sequences whose K/V sit in a paged cache, with the same K/V kept dense for the oracles."""

    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


def build_paged_context(
    context_lens: list[int],
    n_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device | str,
    seed: int = 0,
) -> PagedContext:
    """Blocks are handed out in a shuffled order; every slot no sequence owns holds NaN and
    every unused block-table entry is -1, so a kernel that reads past a sequence's end shows it."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    n_blocks = sum(blocks_per_seq) + 3
    shape = (n_blocks, block_size, n_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    order = torch.randperm(n_blocks, generator=gen)
    block_tables = torch.full((len(context_lens), max(blocks_per_seq, default=0) + 1), -1, dtype=torch.int32)
    keys, values = [], []
    first = 0
    for seq, (length, n_seq_blocks) in enumerate(zip(context_lens, blocks_per_seq, strict=True)):
        ids = order[first : first + n_seq_blocks]
        first += n_seq_blocks
        block_tables[seq, :n_seq_blocks] = ids.int()
        pos = torch.arange(length)
        slots = ids[pos // block_size] * block_size + pos % block_size
        k = torch.randn(length, n_kv_heads, head_dim, generator=gen).to(dtype)
        v = torch.randn(length, n_kv_heads, head_dim, generator=gen).to(dtype)
        k_cache.view(-1, n_kv_heads, head_dim)[slots] = k
        v_cache.view(-1, n_kv_heads, head_dim)[slots] = v
        keys.append(k.to(device))
        values.append(v.to(device))
    return PagedContext(
        k_cache=k_cache.to(device),
        v_cache=v_cache.to(device),
        block_tables=block_tables.to(device),
        seq_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        keys=keys,
        values=values,
    )


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the Triton-vs-reference tests run: the GPU if there is one, else the interpreter on CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def paged_context() -> Callable[..., PagedContext]:
    return build_paged_context


@pytest.fixture(scope="session")
def triton_ops():
    pytest.importorskip("triton")
    from cairn.kernels import triton_ops

    return triton_ops
