"""n > 1 and best_of: samples fork from the prompt's prefill and share its blocks."""

from __future__ import annotations

from dataclasses import replace

from scheduler_harness import Results, make, run, step_once

from cairn.services.scheduler.sequence import FinishReason, Request
from cairn.services.worker.sampling_params import SamplingParams

SAMPLING = SamplingParams(max_tokens=10, seed=40)


def independent(prompt: list[int], count: int, sampling: SamplingParams = SAMPLING) -> list[list[int]]:
    """What each sample must produce: the same request alone with seed + index."""
    requests = [Request(f"alone{i}", prompt, replace(sampling, seed=sampling.seed + i)) for i in range(count)]
    results = run(*make(), requests)
    return [results.tokens[(f"alone{i}", 0)] for i in range(count)]


def test_forks_share_the_prompt_blocks_and_copy_the_partial_tail() -> None:
    prompt = list(range(10))  # 2 full blocks of 4 and a partial one
    scheduler, worker = make()
    results = Results()
    scheduler.add_request(Request("n3", prompt, SAMPLING, n=3))
    prefill = step_once(scheduler, worker, results)
    parent = prefill.input.scheduled[0]
    parent_table = parent.new_block_ids
    fork = step_once(scheduler, worker, results)
    forks = fork.input.new_seqs
    assert [(f.parent_seq_id, f.token_ids) for f in forks] == [(parent.seq_id, prompt)] * 2
    children = {s.seq_id: s for s in fork.input.scheduled if s.seq_id != parent.seq_id}
    assert set(children) == {f.seq_id for f in forks}
    copies = fork.input.block_copies
    assert len(copies) == 2 and all(src == parent_table[2] for src, _ in copies)
    for (_, dst), child in zip(copies, children.values(), strict=True):
        # The child recomputes the last prompt position into its own copy of the tail.
        assert (child.num_computed_tokens, child.num_scheduled_tokens, child.sample) == (9, 1, True)
        assert child.new_block_ids == [dst]
        assert scheduler.block_manager.block_table(child.seq_id)[:2] == parent_table[:2]
    assert all(scheduler.block_manager.pool.ref_counts[b] == 3 for b in parent_table[:2])
    run(scheduler, worker, results=results)
    samples = [results.tokens[("n3", i)] for i in range(3)]
    assert samples == independent(prompt, 3)
    assert len({tuple(s) for s in samples}) == 3


def test_a_full_tail_block_is_recomputed_rather_than_written_shared() -> None:
    prompt = list(range(8))  # exactly 2 full blocks
    scheduler, worker = make()
    results = Results()
    scheduler.add_request(Request("n2", prompt, SAMPLING, n=2))
    parent_table = step_once(scheduler, worker, results).input.scheduled[0].new_block_ids
    fork = step_once(scheduler, worker, results)
    (child_new,) = fork.input.new_seqs
    assert child_new.parent_seq_id is None and not fork.input.block_copies
    child = next(s for s in fork.input.scheduled if s.seq_id == child_new.seq_id)
    assert (child.num_computed_tokens, child.num_scheduled_tokens) == (4, 4)
    assert child.new_block_ids[0] == parent_table[0] and child.new_block_ids[1] != parent_table[1]
    run(scheduler, worker, results=results)
    assert [results.tokens[("n2", i)] for i in range(2)] == independent(prompt, 2)


def test_samples_still_come_when_the_first_one_ends_at_its_first_token() -> None:
    sampling = SamplingParams(max_tokens=1, seed=3)
    prompt = list(range(6))
    results = run(*make(), [Request("one", prompt, sampling, n=4)])
    assert [results.tokens[("one", i)] for i in range(4)] == independent(prompt, 4, sampling)
    assert all(results.finish[("one", i)] is FinishReason.LENGTH for i in range(4))


def test_best_of_returns_the_n_best_ranked_samples_only_at_the_end() -> None:
    prompt = list(range(7))
    scheduler, worker = make()
    results = run(scheduler, worker, [Request("best", prompt, SAMPLING, n=2, best_of=4)])
    deltas = [o for o in results.outputs if o.request_id == "best"]
    assert len(deltas) == 1 and deltas[0].finished
    candidates = independent(prompt, 4)
    ranked = sorted(candidates, key=lambda tokens: sum(-(t % 97) / 10.0 for t in tokens), reverse=True)
    samples = deltas[0].samples
    assert [s.index for s in samples] == [0, 1]
    assert [s.token_ids for s in samples] == ranked[:2]
    assert samples[0].cumulative_logprob >= samples[1].cumulative_logprob
    # Logprobs were needed for ranking, not asked for: none are returned.
    assert all(not s.logprobs for s in samples)
