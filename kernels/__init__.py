"""Model kernels: Triton on CUDA/XPU, pure torch elsewhere (see kernels/README.md).

Paged KV cache per layer: `[num_blocks, block_size, num_kv_heads, head_dim]`,
slot = block_id * block_size + offset. Tokens are packed without padding.
"""

from cairn.kernels import custom_ops  # noqa: F401 - registers torch.ops.cairn for torch.compile
from cairn.kernels.dispatch import (
    add_lora,
    apply_rotary,
    backend_for,
    force_reference,
    gemv_applies,
    linear,
    paged_decode_attention,
    prefill_attention,
    reference_forced,
    rms_norm,
    rms_norm_gemv,
    rotary_and_cache,
    silu_and_mul,
    silu_and_mul_gemv,
    triton_gemv,
    write_kv_cache,
)
from cairn.kernels.quant_dispatch import (
    QuantizedKV,
    paged_decode_attention_quant,
    prefill_attention_quant,
    quantize_activations,
    scaled_gemm,
    weight_only_gemm,
    write_kv_cache_quant,
)
from cairn.kernels.rope_cache import build_rope_cache

__all__ = [
    "QuantizedKV",
    "add_lora",
    "apply_rotary",
    "backend_for",
    "build_rope_cache",
    "force_reference",
    "gemv_applies",
    "linear",
    "paged_decode_attention",
    "paged_decode_attention_quant",
    "prefill_attention",
    "prefill_attention_quant",
    "quantize_activations",
    "reference_forced",
    "rms_norm",
    "rms_norm_gemv",
    "rotary_and_cache",
    "scaled_gemm",
    "silu_and_mul",
    "silu_and_mul_gemv",
    "triton_gemv",
    "weight_only_gemm",
    "write_kv_cache",
    "write_kv_cache_quant",
]
