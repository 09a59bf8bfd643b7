"""RMSNorm with optional fused residual add, HF `LlamaRMSNorm` semantics."""

from __future__ import annotations

import torch


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    if residual is None:
        return _normalize(x, weight, eps)
    # The sum is rounded to x.dtype before normalising, as HF's decoder layer does.
    hidden = x + residual
    return _normalize(hidden, weight, eps), hidden


def _normalize(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    # Cast before the weight multiply, like HF, so bf16 results match it bit for bit.
    return (normed.to(x.dtype) * weight).to(x.dtype)
