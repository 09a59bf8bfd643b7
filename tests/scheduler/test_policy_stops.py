"""When sequences end: EOS, stop tokens, max_tokens, min_tokens, ignore_eos; and multi-step decode."""

from __future__ import annotations

from scheduler_fake_worker import hashed_next_token
from scheduler_harness import Results, make, run, step_once

from cairn.services.scheduler.sequence import FinishReason, Request
from cairn.services.worker.sampling_params import SamplingParams

EOS = 999
STOP = 998


def scripted(tokens: list[int], num_prompt: int, last_digest: int, sampling: SamplingParams) -> int:
    """The prompt's first token picks the output position that is EOS; its
    second, the one that is the STOP token. Other positions hash as usual."""
    position = len(tokens) - num_prompt
    if position == tokens[0]:
        return EOS
    if num_prompt > 1 and position == tokens[1]:
        return STOP
    return hashed_next_token(tokens, num_prompt, last_digest, sampling) % 900


def finish(sampling: SamplingParams, prompt: list[int], **config: object) -> tuple[list[int], FinishReason]:
    scheduler, worker = make(eos_token_ids=[EOS], next_token=scripted, **config)
    results = run(scheduler, worker, [Request("r", prompt, sampling)])
    return results.tokens[("r", 0)], results.finish[("r", 0)]


def test_eos_ends_a_sequence_and_is_returned() -> None:
    tokens, reason = finish(SamplingParams(max_tokens=20), [3, 50])
    assert reason is FinishReason.EOS and len(tokens) == 4 and tokens[-1] == EOS


def test_a_stop_token_ends_a_sequence_and_says_which() -> None:
    scheduler, worker = make(eos_token_ids=[EOS], next_token=scripted)
    results = run(
        scheduler, worker, [Request("r", [50, 2], SamplingParams(max_tokens=20, stop_token_ids=(STOP,)))]
    )
    assert results.finish[("r", 0)] is FinishReason.STOP_TOKEN
    assert results.tokens[("r", 0)][-1] == STOP and len(results.tokens[("r", 0)]) == 3
    last = [s for o in results.outputs for s in o.samples if s.finish_reason is not None]
    assert last[0].stop_token_id == STOP


def test_max_tokens_ends_a_sequence_with_length() -> None:
    tokens, reason = finish(SamplingParams(max_tokens=5), [50, 60])
    assert reason is FinishReason.LENGTH and len(tokens) == 5


def test_min_tokens_holds_eos_back() -> None:
    def always_eos(tokens: list[int], num_prompt: int, last_digest: int, sampling: SamplingParams) -> int:
        return EOS

    for min_tokens in (0, 1, 6):
        scheduler, worker = make(eos_token_ids=[EOS], next_token=always_eos)
        results = run(
            scheduler, worker, [Request("r", [1], SamplingParams(max_tokens=20, min_tokens=min_tokens))]
        )
        assert results.tokens[("r", 0)] == [EOS] * max(1, min_tokens)
        assert results.finish[("r", 0)] is FinishReason.EOS


def test_ignore_eos_runs_to_max_tokens_but_stop_tokens_still_stop() -> None:
    tokens, reason = finish(SamplingParams(max_tokens=8, ignore_eos=True), [2, 50])
    assert tokens[2] == EOS and reason is FinishReason.LENGTH and len(tokens) == 8
    tokens, reason = finish(SamplingParams(max_tokens=8, ignore_eos=True, stop_token_ids=(STOP,)), [2, 4])
    assert reason is FinishReason.STOP_TOKEN and len(tokens) == 5


def test_logprobs_are_returned_only_when_asked() -> None:
    scheduler, worker = make()
    asked = Request("asked", [1, 2], SamplingParams(max_tokens=4, logprobs=0))
    plain = Request("plain", [1, 2], SamplingParams(max_tokens=4))
    results = run(scheduler, worker, [asked, plain])
    samples = {o.request_id: [] for o in results.outputs}
    for output in results.outputs:
        samples[output.request_id] += output.samples
    logprobs = [lp for s in samples["asked"] for lp in s.logprobs]
    assert [lp.token_id for lp in logprobs] == results.tokens[("asked", 0)]
    assert samples["asked"][-1].cumulative_logprob == sum(lp.logprob for lp in logprobs)
    assert all(not s.logprobs for s in samples["plain"])


def test_multi_step_decode_runs_k_steps_with_lookahead_slots() -> None:
    prompts = [[7, 50, *range(i, i + 5)] for i in range(4)]
    requests = [Request(f"r{i}", p, SamplingParams(max_tokens=12, seed=i)) for i, p in enumerate(prompts)]
    single = run(*make(), requests)
    scheduler, worker = make(num_scheduler_steps=4)
    results = run(
        scheduler,
        worker,
        [Request(f"r{i}", p, SamplingParams(max_tokens=12, seed=i)) for i, p in enumerate(prompts)],
    )
    steps = [s.input.num_steps for s in results.steps if s.input.scheduled]
    # The prefill step runs alone; then whole batches of 4 decodes (the worker
    # double checked the lookahead slots), ending early on the last tokens.
    assert steps[0] == 1 and steps[1:3] == [4, 4]
    assert results.tokens == single.tokens
    assert results.finish == single.finish


def test_multi_step_falls_back_to_one_step_while_a_prompt_waits_or_prefills() -> None:
    scheduler, worker = make(num_scheduler_steps=4, max_num_batched_tokens=8)
    results = Results()
    scheduler.add_request(Request("a", [1, 2, 3], SamplingParams(max_tokens=30)))
    step_once(scheduler, worker, results)
    assert step_once(scheduler, worker, results).input.num_steps == 4
    scheduler.add_request(Request("b", list(range(20)), SamplingParams(max_tokens=2)))
    # b's prompt takes three 7-token chunks next to a's decode: one step each.
    assert [step_once(scheduler, worker, results).input.num_steps for _ in range(3)] == [1, 1, 1]
    run(scheduler, worker, results=results)


def test_a_stop_inside_a_multi_step_call_drops_the_tokens_after_it() -> None:
    tokens, reason = finish(SamplingParams(max_tokens=20), [5, 50], num_scheduler_steps=4)
    assert reason is FinishReason.EOS and len(tokens) == 6 and tokens[-1] == EOS


def test_multi_step_never_runs_past_max_model_len() -> None:
    scheduler, worker = make(num_scheduler_steps=8, max_model_len=16)
    results = run(scheduler, worker, [Request("r", list(range(6)), SamplingParams(max_tokens=10))])
    assert len(results.tokens[("r", 0)]) == 10
    # K steps from L tokens compute positions L-1 .. L+K-2: from 15 tokens
    # only 2 steps fit below max_model_len.
    steps = [s for s in results.steps if s.input.scheduled]
    assert [s.input.num_steps for s in steps] == [1, 8, 2]
    for step in steps:
        (entry,) = step.input.scheduled
        assert entry.num_computed_tokens + entry.num_scheduled_tokens + step.input.num_steps - 2 < 16
