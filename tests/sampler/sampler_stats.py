"""Goodness of fit for the statistical sampler tests (fixed seeds, so deterministic)."""

from __future__ import annotations

import torch

# Pearson's statistic stays under this with probability > 0.999 for up to
# 7 degrees of freedom (the largest vocabulary these tests fit is 8 tokens).
CHI_SQUARE_BOUND = 24.3


def chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of sampled `tokens` against `probs`. A token drawn
    where `probs` is 0 makes it infinite."""
    observed = torch.bincount(tokens.flatten().cpu(), minlength=probs.numel()).double()
    expected = probs.double().cpu() * tokens.numel()
    if (observed[expected == 0] > 0).any():
        return float("inf")
    kept = expected > 0
    return float(((observed[kept] - expected[kept]) ** 2 / expected[kept]).sum())
