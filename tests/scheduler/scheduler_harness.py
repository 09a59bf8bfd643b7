"""Drives a Scheduler against the fake worker and checks every step on the way."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from scheduler_fake_worker import FakeWorker, NextToken, hashed_next_token

from cairn.services.scheduler.block_manager import BlockManager
from cairn.services.scheduler.config import SchedulerConfig
from cairn.services.scheduler.output import RequestOutput
from cairn.services.scheduler.policy import Scheduler, SchedulerStep
from cairn.services.scheduler.sequence import FinishReason, Request


def make(
    num_blocks: int = 256,
    eos_token_ids: Iterable[int] = (),
    next_token: NextToken = hashed_next_token,
    **config: object,
) -> tuple[Scheduler, FakeWorker]:
    settings = {"block_size": 4, "max_num_seqs": 8, "max_num_batched_tokens": 32, "max_model_len": 256}
    settings.update(config)
    cfg = SchedulerConfig(**settings)
    manager = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
    return Scheduler(cfg, manager, eos_token_ids), FakeWorker(num_blocks, cfg.block_size, next_token)


@dataclass
class Results:
    tokens: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    finish: dict[tuple[str, int], FinishReason] = field(default_factory=dict)
    outputs: list[RequestOutput] = field(default_factory=list)
    steps: list[SchedulerStep] = field(default_factory=list)

    def collect(self, deltas: list[RequestOutput]) -> None:
        for delta in deltas:
            self.outputs.append(delta)
            for sample in delta.samples:
                key = (delta.request_id, sample.index)
                assert key not in self.finish, f"{key} got tokens after finishing"
                self.tokens.setdefault(key, []).extend(sample.token_ids)
                if sample.finish_reason is not None:
                    self.finish[key] = sample.finish_reason


MidStep = Callable[[SchedulerStep], None]


def step_once(
    scheduler: Scheduler, worker: FakeWorker, results: Results, mid_step: MidStep | None = None
) -> SchedulerStep:
    """One schedule / worker / update round; `mid_step` runs while the step is "on the worker"."""
    step = scheduler.schedule()
    check_step(scheduler, step)
    results.steps.append(step)
    if not step.is_empty:
        output = worker.step(step.input)
        if mid_step is not None:
            mid_step(step)
        results.collect(scheduler.update(step, output))
    scheduler.check_invariants()
    return step


def check_step(scheduler: Scheduler, step: SchedulerStep) -> None:
    config = scheduler.config
    scheduled = step.input.scheduled
    assert sum(s.num_scheduled_tokens for s in scheduled) <= config.max_num_batched_tokens
    assert len(scheduled) <= config.max_num_seqs
    assert step.num_batched_tokens == sum(s.num_scheduled_tokens for s in scheduled)
    sizes = [s.num_scheduled_tokens for s in scheduled]
    assert sizes == sorted(sizes, key=lambda n: n != 1), "one-token entries must come before chunks"
    if step.input.num_steps > 1:
        assert all(s.num_scheduled_tokens == 1 and s.sample for s in scheduled)


def run(
    scheduler: Scheduler,
    worker: FakeWorker,
    requests: Iterable[Request] = (),
    results: Results | None = None,
    before_step: Callable[[int], None] | None = None,
    mid_step: MidStep | None = None,
    max_steps: int = 10_000,
) -> Results:
    """Steps until every request is done, then lets the worker drop the
    finished sequences; at the end no block may be held and the worker must
    hold no sequence."""
    results = results or Results()
    for request in requests:
        scheduler.add_request(request)
    for i in range(max_steps):
        if before_step is not None:
            before_step(i)
        if not scheduler.has_unfinished_requests():
            break
        step = step_once(scheduler, worker, results, mid_step)
        assert step.input.scheduled, "unfinished requests but nothing scheduled: a stall"
    else:
        raise AssertionError(f"not done after {max_steps} steps")
    step_once(scheduler, worker, results)
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks
    assert not worker.seqs, f"the worker still holds {sorted(worker.seqs)}"
    assert not scheduler.running and not len(scheduler.waiting)
    return results
