"""The quantized kernels' API: Triton (or cuBLAS via torch) on accelerators, the torch reference elsewhere.

Same rules as `cairn.kernels.dispatch`: CPU tensors and `force_reference`
take the reference. FP8 GEMMs use `torch._scaled_mm` on GPUs with FP8 tensor
cores (compute capability 8.9+) and the reference (dequantize, matmul) on
others; weight-only GEMMs whose groups are too small for tensor-core tiles
also fall back to the reference. While torch.compile traces, every call goes
through its `torch.ops.cairn` custom op (`quant_custom_ops.py`) instead.
"""

from __future__ import annotations

import torch

from cairn.kernels import quant_custom_ops, reference
from cairn.kernels.dispatch import backend_for
from cairn.kernels.reference import quant_attention, quant_codes, quant_gemm, quant_kv_cache

_FP8_MIN_CAPABILITY = (8, 9)


def _triton(tensor: torch.Tensor) -> bool:
    return backend_for(tensor) is not reference


def quantize_activations(
    x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x `[M, K]` -> (int8 or float8_e4m3fn codes `[M, K]`, fp32 scale): per row (`[M, 1]`) unless a
    static per-tensor `scale` (`[1]`, fp32) is given."""
    if torch.compiler.is_compiling():
        return quant_custom_ops.quantize_activations(x, dtype, scale)
    if _triton(x):
        from cairn.kernels.triton_ops.quant_activation import quantize_activations as impl

        return impl(x, dtype, scale)
    return quant_codes.quantize_activations(x, dtype, scale)


def weight_only_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x `[M, K]` @ W.T (+ bias) -> `[M, N]` in x.dtype, W packed as in `cairn.kernels.quant_layout`:
    `qweight` int32 `[K * bits // 32, N]`, `scales` (and `zeros`) `[K // group_size, N]`."""
    if torch.compiler.is_compiling():
        return quant_custom_ops.weight_only_gemm(x, qweight, scales, zeros, bits, group_size, bias)
    if _triton(x):
        from cairn.kernels.triton_ops import quant_gemm as triton_quant_gemm

        if triton_quant_gemm.supports(x.shape[-1], group_size):
            return triton_quant_gemm.weight_only_gemm(x, qweight, scales, zeros, bits, group_size, bias)
    return quant_gemm.weight_only_gemm(x, qweight, scales, zeros, bits, group_size, bias)


def scaled_gemm(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """W8A8: (x codes `[M, K]` * x scale `[M, 1]` or `[1]`) @ (W codes `[N, K]` * W scale `[N]`).T
    (+ bias) -> `[M, N]` of `out_dtype`. Codes are both int8 or both float8_e4m3fn; scales fp32."""
    if torch.compiler.is_compiling():
        return quant_custom_ops.scaled_gemm(x_codes, x_scale, w_codes, w_scale, bias, out_dtype)
    if _triton(x_codes):
        if x_codes.dtype == torch.int8:
            from cairn.kernels.triton_ops.quant_scaled_gemm import scaled_int8_gemm

            return scaled_int8_gemm(x_codes, x_scale, w_codes, w_scale, bias, out_dtype)
        if _has_fp8_tensor_cores(x_codes.device):
            return _cublas_fp8_gemm(x_codes, x_scale, w_codes, w_scale, bias, out_dtype)
    return quant_gemm.scaled_gemm(x_codes, x_scale, w_codes, w_scale, bias, out_dtype)


def _has_fp8_tensor_cores(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= _FP8_MIN_CAPABILITY


def _cublas_fp8_gemm(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    # Row-wise scaling wants one scale per row of x and per column of W.T, and bf16 output.
    rows = x_codes.shape[0]
    out = torch._scaled_mm(
        x_codes,
        w_codes.t(),
        scale_a=x_scale.float().expand(rows, 1).contiguous(),
        scale_b=w_scale.float().expand(w_codes.shape[0]).reshape(1, -1).contiguous(),
        out_dtype=torch.bfloat16,
    )
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.to(out_dtype)


def write_kv_cache_quant(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Quantize k, v `[T, Hk, D]` into an int8/fp8 cache at their slots (negative slots skipped).

    Scales are fp32: one element (static, per tensor) or `[num_blocks, block_size, Hk]`
    (dynamic: one per token and head, written here)."""
    if torch.compiler.is_compiling():
        return quant_custom_ops.write_kv_cache_quant(k, v, k_cache, v_cache, k_scale, v_scale, slot_mapping)
    if _triton(k):
        from cairn.kernels.triton_ops.quant_kv_cache import write_kv_cache_quant as impl

        return impl(k, v, k_cache, v_cache, k_scale, v_scale, slot_mapping)
    return quant_kv_cache.write_kv_cache_quant(k, v, k_cache, v_cache, k_scale, v_scale, slot_mapping)


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
    """`cairn.kernels.paged_decode_attention` over an int8/fp8 cache with its scales."""
    if torch.compiler.is_compiling():
        return quant_custom_ops.paged_decode_attention_quant(
            q, k_cache, v_cache, k_scale, v_scale, block_tables, seq_lens, scale
        )
    if _triton(q):
        from cairn.kernels.triton_ops.quant_attention import paged_decode_attention_quant as impl

        return impl(q, k_cache, v_cache, k_scale, v_scale, block_tables, seq_lens, scale)
    return quant_attention.paged_decode_attention_quant(
        q, k_cache, v_cache, k_scale, v_scale, block_tables, seq_lens, scale
    )


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
    """`cairn.kernels.prefill_attention` over an int8/fp8 cache with its scales."""
    if torch.compiler.is_compiling():
        return quant_custom_ops.prefill_attention_quant(
            q, k_cache, v_cache, k_scale, v_scale, block_tables, query_start_loc, seq_lens, scale
        )
    if _triton(q):
        from cairn.kernels.triton_ops.quant_attention import prefill_attention_quant as impl

        return impl(q, k_cache, v_cache, k_scale, v_scale, block_tables, query_start_loc, seq_lens, scale)
    return quant_attention.prefill_attention_quant(
        q, k_cache, v_cache, k_scale, v_scale, block_tables, query_start_loc, seq_lens, scale
    )


class QuantizedKV:
    """The attention layer's cache kernels for one layer of an INT8/FP8 cache, scales bound: called
    exactly like `cairn.kernels`' `rotary_and_cache`, `paged_decode_attention` and `prefill_attention`."""

    def __init__(self, k_scale: torch.Tensor, v_scale: torch.Tensor) -> None:
        self.k_scale = k_scale
        self.v_scale = v_scale

    def rotary_and_cache(
        self,
        qkv: torch.Tensor,
        positions: torch.Tensor,
        rope_cache: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rotary as usual, into a one-slot-per-token scratch cache of the model dtype; then the
        quantized store, which needs the rotated keys' magnitudes before it can write codes."""
        from cairn.kernels import dispatch

        tokens = qkv.shape[0]
        shape = (tokens, 1, *k_cache.shape[2:])
        k_new, v_new = qkv.new_empty(shape), qkv.new_empty(shape)
        scratch_slots = torch.arange(tokens, device=qkv.device, dtype=slot_mapping.dtype)
        q = dispatch.rotary_and_cache(qkv, positions, rope_cache, k_new, v_new, scratch_slots, bias)
        write_kv_cache_quant(
            k_new[:, 0], v_new[:, 0], k_cache, v_cache, self.k_scale, self.v_scale, slot_mapping
        )
        return q

    def paged_decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        return paged_decode_attention_quant(
            q, k_cache, v_cache, self.k_scale, self.v_scale, block_tables, seq_lens, scale
        )

    def prefill_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        query_start_loc: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        return prefill_attention_quant(
            q, k_cache, v_cache, self.k_scale, self.v_scale, block_tables, query_start_loc, seq_lens, scale
        )
