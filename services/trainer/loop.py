"""The optimization loop: accumulate, step, evaluate, report, checkpoint; resumable at any saved step."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from cairn.jobs.records import Progress

from . import checkpoints
from .backends import Backend
from .data.batches import Schedule, eval_micro_batches
from .distributed import Dist
from .objectives import Forward, MicroResult
from .plan import TrainPlan
from .progress import Meter
from .schedule import learning_rate

logger = logging.getLogger("cairn.trainer")


class Objective(Protocol):
    def __len__(self) -> int: ...

    def units(self, indices: Sequence[int]) -> float: ...

    def loss(self, forward: Forward, device: torch.device, indices: Sequence[int]) -> MicroResult: ...


@dataclass(frozen=True)
class LoopResult:
    steps: int
    # Loss of the first optimizer step of the whole run (resumes keep the original).
    first_train_loss: float
    # Loss over the last report window.
    final_train_loss: float
    final_eval_loss: float | None


class TrainLoop:
    def __init__(
        self,
        backend: Backend,
        dist: Dist,
        plan: TrainPlan,
        train: Objective,
        evaluation: Objective | None,
        schedule: Schedule,
        total_steps: int,
        *,
        report: Callable[[Progress], None],
        on_checkpoint: Callable[[int, Path], None],
        checkpoint_root: Path,
    ) -> None:
        self.backend = backend
        self.dist = dist
        self.plan = plan
        self.train = train
        self.evaluation = evaluation
        self.schedule = schedule
        self.total_steps = total_steps
        self.report = report
        self.on_checkpoint = on_checkpoint
        self.checkpoint_root = checkpoint_root

    def lr(self, step: int) -> float:
        plan = self.plan
        return learning_rate(step, self.total_steps, plan.learning_rate, plan.lr_scheduler, plan.warmup_ratio)

    def evaluate(self) -> float | None:
        if self.evaluation is None:
            return None
        self.backend.train(False)
        loss_sum = units = 0.0
        with torch.no_grad():
            batches = eval_micro_batches(
                len(self.evaluation), self.plan.micro_batch_size, self.dist.world_size, self.dist.rank
            )
            for indices, counted in batches:
                result = self.evaluation.loss(self.backend.forward, self.dist.device, indices)
                if counted:
                    loss_sum += float(result.loss_sum)
                    units += result.units
        self.backend.train(True)
        loss_sum, units = self.dist.sum([loss_sum, units])
        return loss_sum / units if units else None

    def run(self, start_step: int, state: dict[str, Any]) -> LoopResult:
        """Train from `start_step` (optimizer steps already done) to the end; `state` from the checkpoint."""
        plan, dist = self.plan, self.dist
        meter = Meter(self.total_steps, start_step)
        first_loss: float | None = state.get("first_train_loss")
        last_loss = window_loss = float("nan")
        eval_loss: float | None = state.get("eval_loss")
        stats_window: dict[str, float] = {}
        self.backend.train(True)
        accumulation = self.schedule.accumulation
        for step in range(start_step, self.total_steps):
            micro = self.schedule.micro_batches(step, dist.rank)
            (units,) = dist.sum([sum(self.train.units(m) for m in micro)])
            # DDP and ZeRO average gradients over ranks; the loss is already a mean over the step's units.
            scale = dist.world_size / max(units, 1.0)
            loss_sum = tokens = 0.0
            for j, indices in enumerate(micro):
                with self.backend.micro_batch(last=j == accumulation - 1):
                    result = self.train.loss(self.backend.forward, dist.device, indices)
                    self.backend.backward(result.loss_sum * scale)
                loss_sum += float(result.loss_sum.detach())
                tokens += result.tokens
                for name, value in result.stats.items():
                    stats_window[name] = stats_window.get(name, 0.0) + value
            lr = self.lr(step)
            grad_norm = self.backend.step(lr)
            loss_sum, tokens = dist.sum([loss_sum, tokens])
            meter.add(loss_sum, units, tokens)
            last_loss = loss_sum / max(units, 1.0)
            if first_loss is None:
                first_loss = last_loss
            done = step + 1
            if plan.eval_steps and done % plan.eval_steps == 0 and done < self.total_steps:
                eval_loss = self.evaluate()
            if done % plan.logging_steps == 0 or done == self.total_steps:
                message = self._message(grad_norm, stats_window, meter)
                stats_window = {}
                if done == self.total_steps:
                    eval_loss = self.evaluate()
                progress = meter.report(done, lr, self.schedule.epoch_of(done), eval_loss, message)
                window_loss = progress.loss if progress.loss is not None else last_loss
                if dist.is_main:
                    logger.info(
                        "step %d/%d loss %.4f lr %.3g %s",
                        done,
                        self.total_steps,
                        progress.loss or 0.0,
                        lr,
                        message,
                    )
                self.report(progress)
            if plan.save_steps and done % plan.save_steps == 0 and done < self.total_steps:
                extra = {"first_train_loss": first_loss, "eval_loss": eval_loss}
                path = checkpoints.save(self.backend, dist, self.checkpoint_root, done, extra)
                if dist.is_main:
                    self.on_checkpoint(done, path)
                    checkpoints.rotate(self.checkpoint_root, plan.save_total_limit)
        first = first_loss if first_loss is not None else last_loss
        return LoopResult(self.total_steps, first, window_loss, eval_loss)

    def _message(self, grad_norm: float | None, stats: dict[str, float], meter: Meter) -> str:
        parts = [f"grad_norm {grad_norm:.3g}"] if grad_norm is not None else []
        if "accuracy" in stats:
            (ranked,) = self.dist.sum([stats["accuracy"]])
            pairs = meter.window_units
            parts.append(f"reward accuracy {ranked / pairs:.2f}" if pairs else "")
        return ", ".join(p for p in parts if p)
