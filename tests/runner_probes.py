"""Looking inside a ModelRunner from tests: the logits it computes, without changing what it does."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from cairn.services.worker.model_runner import ModelRunner


@contextlib.contextmanager
def recorded_logits(runner: ModelRunner) -> Iterator[list[torch.Tensor]]:
    """Every logits tensor the runner computes (eager or from a CUDA graph), in order, as float32."""
    compute = runner._logits
    seen: list[torch.Tensor] = []

    def record(*args: Any, **kwargs: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        logits, argmax = compute(*args, **kwargs)
        if logits is not None:
            seen.append(logits.float().clone())
        return logits, argmax

    runner._logits = record
    try:
        yield seen
    finally:
        del runner._logits
