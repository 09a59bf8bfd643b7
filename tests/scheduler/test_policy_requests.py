"""Request admission, priorities, validation and the schedule/update protocol."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from scheduler_harness import Results, make, run, step_once

from cairn.common.errors import AlreadyExists, CairnError, FailedPrecondition, InvalidArgument
from cairn.services.scheduler.block_manager import BlockManager
from cairn.services.scheduler.config import SchedulerConfig
from cairn.services.scheduler.policy import Scheduler
from cairn.services.scheduler.sequence import Request
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import StepOutput


def test_prompt_plus_max_tokens_beyond_max_model_len_is_rejected_with_the_numbers() -> None:
    scheduler, _ = make(max_model_len=32)
    with pytest.raises(InvalidArgument) as error:
        scheduler.add_request(Request("long", list(range(30)), SamplingParams(max_tokens=5)))
    for number in ("30", "5", "35", "32"):
        assert number in error.value.message
    scheduler.add_request(Request("fits", list(range(30)), SamplingParams(max_tokens=2)))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (Request("", [1]), "request_id"),
        (Request("empty", []), "at least one token"),
        (Request("negative", [1, -2]), ">= 0"),
        (Request("n", [1], n=0), "n must be"),
        (Request("best", [1], n=3, best_of=2), "best_of"),
        (Request("wide", [1], n=9), "max_num_seqs"),
        (Request("huge", list(range(100)), SamplingParams(max_tokens=100)), "KV blocks"),
    ],
)
def test_bad_requests_are_rejected(request_: Request, message: str) -> None:
    scheduler, _ = make(num_blocks=16)
    with pytest.raises(InvalidArgument, match=message):
        scheduler.add_request(request_)
    assert not scheduler.has_unfinished_requests()


def test_a_live_request_id_cannot_be_reused() -> None:
    scheduler, worker = make()
    scheduler.add_request(Request("same", [1, 2]))
    with pytest.raises(AlreadyExists):
        scheduler.add_request(Request("same", [3]))
    run(scheduler, worker)
    run(scheduler, worker, [Request("same", [3])])


def test_lower_priority_value_runs_first_and_fcfs_within_a_priority() -> None:
    scheduler, worker = make(max_num_seqs=1)
    for name, priority in (("late-low", 1), ("first-high", 0), ("second-high", 0), ("urgent", -1)):
        scheduler.add_request(Request(name, [1, 2], SamplingParams(max_tokens=2), priority=priority))
    results = run(scheduler, worker)
    finished = [o.request_id for o in results.outputs if o.finished]
    assert finished == ["urgent", "first-high", "second-high", "late-low"]


def test_steps_must_alternate_with_updates() -> None:
    scheduler, worker = make()
    scheduler.add_request(Request("r", [1, 2, 3]))
    step = scheduler.schedule()
    with pytest.raises(FailedPrecondition):
        scheduler.schedule()
    output = worker.step(step.input)
    scheduler.update(step, output)
    with pytest.raises(FailedPrecondition):
        scheduler.update(step, output)


def test_a_worker_that_returns_no_token_is_an_error() -> None:
    scheduler, _ = make()
    scheduler.add_request(Request("r", [1, 2, 3]))
    with pytest.raises(CairnError, match="expected 1"):
        scheduler.update(scheduler.schedule(), StepOutput())


def test_nothing_to_do_gives_an_empty_step() -> None:
    scheduler, _ = make()
    step = scheduler.schedule()
    assert step.is_empty
    scheduler.schedule()


def test_finished_sequences_are_dropped_by_the_worker_with_the_next_step() -> None:
    scheduler, worker = make()
    results = run(scheduler, worker, [Request("r", [1, 2], SamplingParams(max_tokens=1))])
    last = results.steps[-1].input
    assert not last.scheduled and last.finished_seq_ids == [results.steps[0].input.scheduled[0].seq_id]


def test_stats_follow_the_work() -> None:
    scheduler, worker = make(num_blocks=32)
    results = Results()
    scheduler.add_request(Request("a", list(range(9)), SamplingParams(max_tokens=4)))
    scheduler.add_request(Request("b", list(range(9)), SamplingParams(max_tokens=4)))
    step_once(scheduler, worker, results)
    stats = scheduler.stats()
    assert (stats.running, stats.waiting) == (2, 0)
    assert stats.kv_usage == pytest.approx(6 / 32)
    run(scheduler, worker, results=results)
    stats = scheduler.stats()
    assert stats.finished_requests == 2 and stats.generated_tokens == 8
    # Each computed 12 tokens (3 full blocks) at the same time: all 6 stay cached.
    assert stats.free_blocks == 32 and stats.cached_free_blocks == 6 and stats.kv_usage == 0.0


def test_config_rejects_a_budget_below_max_model_len_without_chunking() -> None:
    with pytest.raises(ValidationError, match="chunked prefill is off"):
        SchedulerConfig(enable_chunked_prefill=False, max_num_batched_tokens=1024, max_model_len=2048)
    with pytest.raises(InvalidArgument, match="block_size"):
        Scheduler(SchedulerConfig(block_size=16), BlockManager(8, 8))


def test_aborted_waiting_requests_do_not_pile_up_in_the_queue() -> None:
    scheduler, worker = make(max_num_seqs=1)
    scheduler.add_request(Request("running", [1], SamplingParams(max_tokens=4)))
    for i in range(500):
        scheduler.add_request(Request(f"w{i}", [1, 2], priority=5))
        scheduler.abort(f"w{i}")
    assert len(scheduler.waiting) == 1 and len(scheduler.waiting._heap) < 100
    run(scheduler, worker)
