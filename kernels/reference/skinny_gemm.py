"""Decode-size linear layers and their fused prologues, as the unfused torch ops they replace."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cairn.kernels.reference.activation import silu_and_mul
from cairn.kernels.reference.norm import rms_norm


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight)


def rms_norm_gemv(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    if residual is None:
        return F.linear(rms_norm(x, norm_weight, eps), weight), x
    normed, summed = rms_norm(x, norm_weight, eps, residual)
    return F.linear(normed, weight), summed


def silu_and_mul_gemv(gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(silu_and_mul(gate_up), weight)
