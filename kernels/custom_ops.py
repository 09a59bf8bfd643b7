"""The kernels as `torch.ops.cairn` custom ops, for torch.compile.

Dynamo cannot trace into a Triton launcher's Python (grid and split
heuristics, cached device queries) without graph breaks; as custom ops with
fake implementations each kernel is one opaque node of known output shape,
and Inductor compiles what lies between them. The implementations dispatch
per device exactly like the eager functions in `dispatch.py`, which route
here only while compiling.

`rotary_and_cache` writes the KV cache without declaring it, as vLLM's
attention ops do: every layer's K and V are views of one allocation, and
declared writes to two views of one base make functionalization clone that
base around the call (the whole cache, every layer, every step). Nothing is
lost by not declaring them: the attention ops that read the cache take the
op's q, so no compiler can move a read before the write.
"""

from __future__ import annotations

import torch

from cairn.kernels.dispatch import backend_for


@torch.library.custom_op("cairn::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return backend_for(x).rms_norm(x, weight, eps)


@rms_norm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("cairn::add_rms_norm", mutates_args=())
def add_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return backend_for(x).rms_norm(x, weight, eps, residual)


@add_rms_norm.register_fake
def _(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("cairn::silu_and_mul", mutates_args=())
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return backend_for(x).silu_and_mul(x)


@silu_and_mul.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@torch.library.custom_op("cairn::rotary_and_cache", mutates_args=())
def rotary_and_cache(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    rope_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    return backend_for(qkv).rotary_and_cache(qkv, positions, rope_cache, k_cache, v_cache, slot_mapping, bias)


@rotary_and_cache.register_fake
def _(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    rope_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    n_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    return qkv.new_empty((qkv.shape[0], qkv.shape[1] // head_dim - 2 * n_kv_heads, head_dim))


@torch.library.custom_op("cairn::paged_decode_attention", mutates_args=())
def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    return backend_for(q).paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)


@paged_decode_attention.register_fake
def _(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    return torch.empty_like(q)


@torch.library.custom_op("cairn::prefill_attention", mutates_args=())
def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    args = (q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale)
    return backend_for(q).prefill_attention(*args)


@prefill_attention.register_fake
def _(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    return torch.empty_like(q)


@torch.library.custom_op("cairn::add_lora", mutates_args=("y",))
def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    token_order: torch.Tensor,
    slot_starts: torch.Tensor,
    slice_offsets: list[int],
) -> None:
    backend_for(x).add_lora(y, x, lora_a, lora_b, token_order, slot_starts, slice_offsets)


@add_lora.register_fake
def _(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    token_order: torch.Tensor,
    slot_starts: torch.Tensor,
    slice_offsets: list[int],
) -> None:
    return None
