"""Continuous batching: budgets, chunked prefill, prefix caching."""

from __future__ import annotations

import random

from scheduler_harness import Results, make, run, step_once

from cairn.services.scheduler.sequence import Request
from cairn.services.worker.sampling_params import SamplingParams


def request(request_id: str, prompt: list[int], max_tokens: int = 8, **kwargs: object) -> Request:
    sampling = kwargs.pop("sampling", None) or SamplingParams(max_tokens=max_tokens, seed=7)
    return Request(request_id, prompt, sampling, **kwargs)


def workload(seed: int, count: int = 24) -> list[Request]:
    rng = random.Random(seed)
    return [
        request(f"r{i}", [rng.randrange(40) for _ in range(rng.randrange(1, 60))], rng.randrange(1, 24))
        for i in range(count)
    ]


def test_token_budget_and_max_num_seqs_hold_every_step() -> None:
    scheduler, worker = make(max_num_batched_tokens=16, max_num_seqs=4)
    results = run(scheduler, worker, workload(1))
    # The harness checked both limits on every step; the limits were also reached.
    assert max(len(s.input.scheduled) for s in results.steps) == 4
    assert max(s.num_batched_tokens for s in results.steps) == 16
    assert len(results.finish) == 24


def test_chunked_prefill_splits_long_prompts_and_schedules_decodes_first() -> None:
    scheduler, worker = make(max_num_batched_tokens=16)
    results = Results()
    scheduler.add_request(request("short", [1, 2, 3], max_tokens=20))
    step_once(scheduler, worker, results)
    scheduler.add_request(request("long", list(range(100, 140))))
    short_id, long_id = (r.seqs[0].seq_id for r in (scheduler.requests["short"], scheduler.requests["long"]))
    chunks = []
    for _ in range(3):
        step = step_once(scheduler, worker, results)
        assert [s.seq_id for s in step.input.scheduled] == [short_id, long_id]
        decode, chunk = step.input.scheduled
        assert decode.num_scheduled_tokens == 1 and decode.sample
        chunks.append((chunk.num_computed_tokens, chunk.num_scheduled_tokens, chunk.sample))
    assert chunks == [(0, 15, False), (15, 15, False), (30, 10, True)]
    run(scheduler, worker, results=results)


def test_without_chunked_prefill_a_prompt_waits_to_fit_whole_and_blocks_later_ones() -> None:
    scheduler, worker = make(enable_chunked_prefill=False, max_num_batched_tokens=64, max_model_len=64)
    results = Results()
    for name in ("a", "b"):
        scheduler.add_request(request(name, [1, 2, 3, 4], max_tokens=6))
    step_once(scheduler, worker, results)
    scheduler.add_request(request("big", list(range(63)), max_tokens=1))
    scheduler.add_request(request("small", [9], max_tokens=1))
    big = scheduler.requests["big"].seqs[0]
    while big.seq_id not in {s.seq_id for s in step_once(scheduler, worker, results).input.scheduled}:
        # Two decodes leave 62 of 64 tokens: the 63-token prompt must wait,
        # and FCFS keeps the small one behind it.
        assert scheduler.requests["small"].seqs[0].num_computed_tokens == 0
    entry = next(s for s in results.steps[-1].input.scheduled if s.seq_id == big.seq_id)
    assert (entry.num_computed_tokens, entry.num_scheduled_tokens) == (0, 63)
    assert ("a", 0) in results.finish or ("b", 0) in results.finish
    run(scheduler, worker, results=results)


def test_prefix_caching_skips_cached_blocks_with_the_same_tokens() -> None:
    system = list(range(200, 213))  # 13 tokens: three full blocks of 4
    first = request("first", [*system, 1, 2])
    second = request("second", [*system, 3])
    scheduler, worker = make()
    results = run(scheduler, worker, [first])
    first_table = results.steps[0].input.scheduled[0].new_block_ids
    results = run(scheduler, worker, [second], results=results)
    entry = next(s for s in results.steps[-2::-1] if s.input.new_seqs).input.scheduled[0]
    assert entry.num_computed_tokens == 12 and entry.num_scheduled_tokens == 2
    assert entry.new_block_ids[:3] == first_table[:3]
    deltas = [o for o in results.outputs if o.request_id == "second"]
    assert deltas[0].num_cached_tokens == 12 and all(d.num_cached_tokens == 0 for d in deltas[1:])
    assert scheduler.block_manager.prefix_cache_hit_rate == 12 / (15 + 14)

    uncached, worker = make(enable_prefix_caching=False)
    reference = run(uncached, worker, [request("first", [*system, 1, 2]), request("second", [*system, 3])])
    assert reference.tokens == results.tokens


def test_a_running_prompt_is_a_prefix_hit_for_later_requests() -> None:
    scheduler, worker = make()
    results = Results()
    scheduler.add_request(request("a", list(range(9)), max_tokens=30))
    step_once(scheduler, worker, results)
    scheduler.add_request(request("b", [*range(8), 50]))
    step = step_once(scheduler, worker, results)
    entry = next(s for s in step.input.scheduled if s.seq_id == scheduler.requests["b"].seqs[0].seq_id)
    assert entry.num_computed_tokens == 8
    run(scheduler, worker, results=results)


def test_prompt_logprobs_bypass_the_cache_and_arrive_once() -> None:
    scheduler, worker = make(max_num_batched_tokens=6)
    prompt = list(range(300, 311))
    run(scheduler, worker, [request("warm", prompt)])
    asked = request("asked", prompt, sampling=SamplingParams(max_tokens=3, prompt_logprobs=1))
    results = run(scheduler, worker, [asked])
    firsts = [s.input.scheduled[0] for s in results.steps if s.input.new_seqs]
    assert firsts[-1].num_computed_tokens == 0
    deltas = [o for o in results.outputs if o.request_id == "asked"]
    assert [t.token_id for t in deltas[0].prompt_logprobs] == prompt[1:]
    assert all(not d.prompt_logprobs for d in deltas[1:])
