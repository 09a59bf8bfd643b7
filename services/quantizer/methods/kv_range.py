"""Static KV-cache scales: the largest |K| (rotated, as cached) and |V| a layer produced on calibration."""

from __future__ import annotations

import torch

_CODE_MAX = {"int8": 127.0, "fp8": float(torch.finfo(torch.float8_e4m3fn).max)}
_MIN_SCALE = 1e-8


class KVRange:
    def __init__(self) -> None:
        self.k_max = 0.0
        self.v_max = 0.0

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.k_max = max(self.k_max, float(keys.abs().max()))
        self.v_max = max(self.v_max, float(values.abs().max()))

    def scales(self, dtype: str) -> tuple[float, float]:
        """(k_scale, v_scale) mapping the observed maxima onto the code range of `dtype`."""
        top = _CODE_MAX[dtype]
        return max(self.k_max / top, _MIN_SCALE), max(self.v_max / top, _MIN_SCALE)


def rotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX rotary of keys `[batch, tokens, heads, head_dim]` with cos/sin `[batch, tokens, head_dim]`."""
    half = keys.shape[-1] // 2
    rotated_half = torch.cat((-keys[..., half:], keys[..., :half]), dim=-1)
    return keys * cos[:, :, None, :] + rotated_half * sin[:, :, None, :]
