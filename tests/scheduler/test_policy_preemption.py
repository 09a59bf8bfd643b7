"""Preemption by recompute, aborts and worker loss: nothing is lost, nothing leaks."""

from __future__ import annotations

import random

import pytest
from scheduler_fake_worker import FakeWorker
from scheduler_harness import Results, make, run, step_once

from cairn.services.scheduler.sequence import FinishReason, Request, SequenceStatus
from cairn.services.worker.sampling_params import SamplingParams


def workload(seed: int, count: int = 16) -> list[Request]:
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        prompt = [rng.randrange(30) for _ in range(rng.randrange(1, 40))]
        sampling = SamplingParams(max_tokens=rng.randrange(1, 30), seed=rng.randrange(100))
        n = rng.choice([1, 1, 1, 2, 3])
        requests.append(Request(f"r{i}", prompt, sampling, n=n, priority=rng.choice([0, 0, 1])))
    return requests


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_small_pool_preempts_yet_every_request_gets_the_same_tokens(seed: int) -> None:
    reference = run(*make(num_blocks=512, max_num_seqs=16), workload(seed))
    scheduler, worker = make(num_blocks=20, max_num_seqs=16)
    small = run(scheduler, worker, workload(seed))
    assert scheduler.num_preemptions > 0
    assert small.tokens == reference.tokens and small.finish == reference.finish
    scheduler, worker = make(num_blocks=20, max_num_seqs=16, num_scheduler_steps=3)
    multi = run(scheduler, worker, workload(seed))
    assert multi.tokens == reference.tokens and multi.finish == reference.finish


def test_a_preempted_sequence_comes_back_with_all_its_tokens() -> None:
    # 8 blocks of 4: two sequences of 9 prompt tokens (3 blocks each) cannot
    # both grow past 16 tokens.
    scheduler, worker = make(num_blocks=8, enable_prefix_caching=False)
    results = Results()
    for name in ("first", "second"):
        scheduler.add_request(Request(name, list(range(9)), SamplingParams(max_tokens=12, seed=len(name))))
    victim = scheduler.requests["second"].seqs[0]
    while not scheduler.num_preemptions:
        step = step_once(scheduler, worker, results)
    assert victim.seq_id in step.input.finished_seq_ids
    assert victim.seq_id not in {s.seq_id for s in step.input.scheduled}
    tokens_then = list(victim.token_ids)
    assert len(tokens_then) > 9
    while not (
        back := [n for n in step_once(scheduler, worker, results).input.new_seqs if n.seq_id == victim.seq_id]
    ):
        pass
    assert back[0].token_ids == tokens_then and back[0].num_prompt_tokens == 9
    run(scheduler, worker, results=results)
    assert len(results.tokens[("second", 0)]) == 12


def test_the_victim_ranks_last_by_priority_then_arrival() -> None:
    scheduler, worker = make(num_blocks=9, enable_prefix_caching=False)
    results = Results()
    for name, priority in (("early", 0), ("low", 1), ("late", 0)):
        scheduler.add_request(Request(name, list(range(8)), SamplingParams(max_tokens=20), priority=priority))
    seqs = {name: request.seqs[0] for name, request in scheduler.requests.items()}
    order: list[str] = []
    preempted: set[str] = set()
    while scheduler.has_unfinished_requests():
        step_once(scheduler, worker, results)
        now = {name for name, seq in seqs.items() if seq.status is SequenceStatus.PREEMPTED}
        order += sorted(now - preempted)
        preempted = now
    assert order[:2] == ["low", "late"]
    assert "early" not in order


@pytest.mark.parametrize("trial", range(6))
def test_aborts_at_random_moments_leak_nothing(trial: int) -> None:
    rng = random.Random(trial)
    scheduler, worker = make(num_blocks=24, max_num_seqs=6, num_scheduler_steps=1 + trial % 3)
    results = Results()
    aborted: list[str] = []

    def maybe_abort(_: object) -> None:
        live = sorted(scheduler.requests)
        if live and rng.random() < 0.3:
            victim = rng.choice(live)
            last = scheduler.abort(victim)
            assert last.finished and all(s.finish_reason is FinishReason.ABORT for s in last.samples)
            # The harness fails if an aborted sample gets tokens afterwards.
            results.collect([last])
            aborted.append(victim)
            assert scheduler.abort(victim) is None

    run(scheduler, worker, workload(trial + 10), results, before_step=maybe_abort, mid_step=maybe_abort)
    assert aborted


def test_abort_while_the_step_runs_is_dropped_from_its_update() -> None:
    scheduler, worker = make()
    scheduler.add_request(Request("gone", [1, 2, 3], SamplingParams(max_tokens=5)))
    scheduler.add_request(Request("kept", [4, 5, 6], SamplingParams(max_tokens=5)))
    step = scheduler.schedule()
    output = worker.step(step.input)
    last = scheduler.abort("gone")
    assert last.finished and last.samples[0].finish_reason is FinishReason.ABORT
    deltas = scheduler.update(step, output)
    assert [d.request_id for d in deltas] == ["kept"]
    gone_id = step.input.scheduled[0].seq_id
    assert gone_id in scheduler.schedule().input.finished_seq_ids


def test_a_lost_worker_costs_a_re_prefill_not_an_error() -> None:
    reference = run(*make(), workload(7))
    scheduler, worker = make()
    results = Results()
    for request in workload(7):
        scheduler.add_request(request)
    for _ in range(6):
        step_once(scheduler, worker, results)
    scheduler.schedule()  # in flight when the worker dies
    scheduler.on_worker_lost()
    assert scheduler.block_manager.num_free_blocks == scheduler.block_manager.num_blocks
    fresh = FakeWorker(len(worker.cache), worker.block_size)
    run(scheduler, fresh, results=results)
    assert results.tokens == reference.tokens
