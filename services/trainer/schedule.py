"""Learning rate at each optimizer step: a pure function of the step, so resuming needs no state."""

from __future__ import annotations

import math


def learning_rate(step: int, total: int, peak: float, scheduler: str, warmup_ratio: float) -> float:
    """The rate for optimizer step `step` (0-based) of `total`; HF Trainer's schedules."""
    warmup = math.ceil(warmup_ratio * total)
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if scheduler in ("constant", "constant_with_warmup"):
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    if scheduler == "linear":
        return peak * max(0.0, 1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
