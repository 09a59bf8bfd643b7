"""Pure-torch kernels: the CPU path of the engine and the oracle for the Triton kernels."""

from cairn.kernels.reference.activation import silu_and_mul
from cairn.kernels.reference.attention import paged_decode_attention, prefill_attention
from cairn.kernels.reference.kv_cache import write_kv_cache
from cairn.kernels.reference.lora import add_lora
from cairn.kernels.reference.norm import rms_norm
from cairn.kernels.reference.rotary import apply_rotary
from cairn.kernels.reference.rotary_cache import rotary_and_cache
from cairn.kernels.reference.skinny_gemm import gemv, rms_norm_gemv, silu_and_mul_gemv

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
