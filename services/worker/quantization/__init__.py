"""Quantized serving: schemes from config.json, quantized linear layers, checkpoint loading, KV-cache types.

Formats: compressed-tensors (pack-quantized W4A16/W8A16, int-quantized W8A8,
float-quantized FP8, kv_cache_scheme), community GPTQ (v1/v2, act order) and
AWQ (GEMM) checkpoints in their HF layout. Kernels: `cairn.kernels.quant_dispatch`.
"""

from cairn.services.worker.quantization.config import (
    KV_CACHE_DTYPES,
    QUANTIZATIONS,
    KVScheme,
    QuantConfig,
    WeightScheme,
    checkpoint_quantization,
    engine_quantization,
)
from cairn.services.worker.quantization.kv import KVCacheQuant, resolve_kv_cache
from cairn.services.worker.quantization.linear import QuantizedLinear, W8A8Linear, WeightOnlyLinear
from cairn.services.worker.quantization.loading import (
    QuantizedCheckpoint,
    init_dummy_quantized,
    quantize_model,
)

__all__ = [
    "KV_CACHE_DTYPES",
    "QUANTIZATIONS",
    "KVCacheQuant",
    "KVScheme",
    "QuantConfig",
    "QuantizedCheckpoint",
    "QuantizedLinear",
    "W8A8Linear",
    "WeightOnlyLinear",
    "WeightScheme",
    "checkpoint_quantization",
    "engine_quantization",
    "init_dummy_quantized",
    "quantize_model",
    "resolve_kv_cache",
]
