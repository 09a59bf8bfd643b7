"""Triton implementations of the kernels; `cairn.kernels` dispatches here for CUDA/XPU tensors.

Importable on any machine with triton; under TRITON_INTERPRET=1 they also run
on CPU tensors, which is how CI tests them.
"""

from cairn.kernels.triton_ops.activation import silu_and_mul
from cairn.kernels.triton_ops.decode import paged_decode_attention
from cairn.kernels.triton_ops.kv_cache import write_kv_cache
from cairn.kernels.triton_ops.lora import add_lora
from cairn.kernels.triton_ops.norm import rms_norm
from cairn.kernels.triton_ops.prefill import prefill_attention
from cairn.kernels.triton_ops.rotary import apply_rotary
from cairn.kernels.triton_ops.rotary_cache import rotary_and_cache
from cairn.kernels.triton_ops.skinny_gemm import gemv, rms_norm_gemv, silu_and_mul_gemv

__all__ = [
    "add_lora",
    "apply_rotary",
    "gemv",
    "paged_decode_attention",
    "prefill_attention",
    "rms_norm",
    "rms_norm_gemv",
    "rotary_and_cache",
    "silu_and_mul",
    "silu_and_mul_gemv",
    "write_kv_cache",
]
