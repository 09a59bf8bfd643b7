"""SmoothQuant (Xiao et al., 2022): migrate activation outliers into the weights before W8A8.

Per input channel j, `s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`; the layer
computes `(X / s) @ (W * s).T`, the same product, with the activation's
outlier channels tamed (easier per-token INT8) and the weights a little
harder (per-channel INT8 absorbs it). `1 / s` is folded into the norm that
produces X. alpha = 0.5 balances the two; 0.8 suits models with strong
outliers (the default).
"""

from __future__ import annotations

import torch

_MIN = 1e-5


class ChannelMax:
    """Running per-channel max |x| over every input row seen."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def add(self, inputs: torch.Tensor) -> None:
        peak = inputs.reshape(-1, inputs.shape[-1]).abs().amax(dim=0).float()
        self.value = peak if self.value is None else torch.maximum(self.value, peak)


def smoothing_scale(activation_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s `[in]` for the layers (`[out_i, in]` each) sharing an input whose channel maxima are given."""
    weight_max = torch.cat([w.float() for w in weights]).abs().amax(dim=0)
    scale = activation_max.float().clamp(min=_MIN).pow(alpha) / weight_max.clamp(min=_MIN).pow(1 - alpha)
    return scale.clamp(min=_MIN)
