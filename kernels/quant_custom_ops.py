"""The quantized kernels as `torch.ops.cairn` custom ops, for torch.compile (see `custom_ops.py`).

Each is one opaque node of known output shape to Dynamo; the implementations
dispatch per device exactly like the eager functions in `quant_dispatch.py`,
which route here only while compiling. Static activation scales come back
cloned: a custom op may not return one of its inputs.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("cairn::quantize_activations", mutates_args=())
def quantize_activations(
    x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    from cairn.kernels import quant_dispatch

    codes, scales = quant_dispatch.quantize_activations(x, dtype, scale)
    return codes, scales if scale is None else scales.clone()


@quantize_activations.register_fake
def _(x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    scales = x.new_empty((x.shape[0], 1), dtype=torch.float32) if scale is None else torch.empty_like(scale)
    return x.new_empty(x.shape, dtype=dtype), scales


@torch.library.custom_op("cairn::weight_only_gemm", mutates_args=())
def weight_only_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    from cairn.kernels import quant_dispatch

    return quant_dispatch.weight_only_gemm(x, qweight, scales, zeros, bits, group_size, bias)


@weight_only_gemm.register_fake
def _(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    return x.new_empty((x.shape[0], qweight.shape[1]))


@torch.library.custom_op("cairn::scaled_gemm", mutates_args=())
def scaled_gemm(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    from cairn.kernels import quant_dispatch

    return quant_dispatch.scaled_gemm(x_codes, x_scale, w_codes, w_scale, bias, out_dtype)


@scaled_gemm.register_fake
def _(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    return x_codes.new_empty((x_codes.shape[0], w_codes.shape[0]), dtype=out_dtype)


@torch.library.custom_op(
    "cairn::write_kv_cache_quant", mutates_args=("k_cache", "v_cache", "k_scale", "v_scale")
)
def write_kv_cache_quant(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    from cairn.kernels import quant_dispatch

    quant_dispatch.write_kv_cache_quant(k, v, k_cache, v_cache, k_scale, v_scale, slot_mapping)


@write_kv_cache_quant.register_fake
def _(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    return None


@torch.library.custom_op("cairn::paged_decode_attention_quant", mutates_args=())
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
    from cairn.kernels import quant_dispatch

    return quant_dispatch.paged_decode_attention_quant(
        q, k_cache, v_cache, k_scale, v_scale, block_tables, seq_lens, scale
    )


@paged_decode_attention_quant.register_fake
def _(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    return torch.empty_like(q)


@torch.library.custom_op("cairn::prefill_attention_quant", mutates_args=())
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
    from cairn.kernels import quant_dispatch

    return quant_dispatch.prefill_attention_quant(
        q, k_cache, v_cache, k_scale, v_scale, block_tables, query_start_loc, seq_lens, scale
    )


@prefill_attention_quant.register_fake
def _(
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
    return torch.empty_like(q)
