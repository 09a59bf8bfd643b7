"""Progress reports: losses averaged over the report window, throughput, ETA."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cairn.jobs.records import Progress


@dataclass
class Meter:
    total_steps: int
    start_step: int
    _window_loss: float = 0.0
    _window_units: float = 0.0
    _window_tokens: float = 0.0
    _window_start: float = field(default_factory=time.monotonic)
    _run_start: float = field(default_factory=time.monotonic)

    def add(self, loss_sum: float, units: float, tokens: float) -> None:
        """One optimizer step's summed loss, its units (label tokens or pairs) and tokens, over all ranks."""
        self._window_loss += loss_sum
        self._window_units += units
        self._window_tokens += tokens

    @property
    def window_units(self) -> float:
        return self._window_units

    def report(
        self, step: int, lr: float, epoch: float, eval_loss: float | None, message: str = ""
    ) -> Progress:
        """`step` optimizer steps are done; closes the window."""
        now = time.monotonic()
        elapsed = max(now - self._window_start, 1e-9)
        done = step - self.start_step
        per_step = (now - self._run_start) / max(done, 1)
        progress = Progress(
            step=step,
            total_steps=self.total_steps,
            loss=self._window_loss / self._window_units if self._window_units else None,
            learning_rate=lr,
            tokens_per_second=self._window_tokens / elapsed,
            eta_seconds=per_step * (self.total_steps - step),
            eval_loss=eval_loss,
            epoch=epoch,
            message=message,
        )
        self._window_loss = self._window_units = self._window_tokens = 0.0
        self._window_start = now
        return progress
