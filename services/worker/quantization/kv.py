"""The KV cache's element type: the model dtype, or INT8 / FP8 codes with static or dynamic scales.

Static scales are the checkpoint's calibrated per-layer k_scale / v_scale
(one fp32 value each). Dynamic scales are computed as tokens are written,
one per token and kv head, and live in the cache allocation beside the codes
(4 bytes per head-vector of 1-byte codes: a 3% overhead at head_dim 128).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cairn.common.errors import InvalidArgument
from cairn.services.worker.models import ModelConfig
from cairn.services.worker.quantization.config import KV_CACHE_DTYPES, QuantConfig
from cairn.services.worker.quantization.loading import kv_scales

_CODE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
_SCALE_BYTES = 4


@dataclass(frozen=True)
class KVCacheQuant:
    dtype: torch.dtype
    # Per layer (k_scale, v_scale), fp32 `[1]`; None: dynamic scales.
    static_scales: list[tuple[torch.Tensor, torch.Tensor]] | None

    @property
    def name(self) -> str:
        return next(name for name, dtype in _CODE_DTYPES.items() if dtype == self.dtype)

    @property
    def dynamic(self) -> bool:
        return self.static_scales is None

    def scale_bytes_per_block(self, config: ModelConfig, block_size: int) -> int:
        """Bytes of dynamic scales one block takes across all layers, K and V."""
        if not self.dynamic:
            return 0
        return 2 * config.num_layers * block_size * config.num_kv_heads * _SCALE_BYTES


def resolve_kv_cache(requested: str, quant: QuantConfig, model: nn.Module) -> KVCacheQuant | None:
    """`auto`: what the checkpoint declares (or the model dtype); `int8`/`fp8`: that, with the
    checkpoint's static scales when it calibrated them for the same type, else dynamic scales."""
    if requested not in KV_CACHE_DTYPES:
        raise InvalidArgument(f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}, got {requested!r}")
    declared = quant.kv_cache
    if requested == "auto":
        if declared is None:
            return None
        requested = declared.dtype
    static = declared is not None and declared.static and declared.dtype == requested
    return KVCacheQuant(_CODE_DTYPES[requested], kv_scales(model) if static else None)
