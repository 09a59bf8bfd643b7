"""Property: whatever the limits, pool size, chunking, caching, multi-step,
priorities, forks and aborts, every request that is not aborted gets exactly
the tokens it gets when it runs alone in a large pool, every step respects the
budgets (checked by the harness), and nothing leaks at the end."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scheduler_fake_worker import hashed_next_token
from scheduler_harness import Results, make, run, step_once

from cairn.services.scheduler.sequence import Request
from cairn.services.worker.sampling_params import SamplingParams

MAX_MODEL_LEN = 48
EOS = 0


def small_vocab(tokens: list[int], num_prompt: int, last_digest: int, sampling: SamplingParams) -> int:
    # 1 in 40 draws is EOS, so natural stops are common.
    return hashed_next_token(tokens, num_prompt, last_digest, sampling) % 40


@dataclass
class Spec:
    prompt: list[int]
    max_tokens: int
    n: int
    best_of: int | None
    priority: int
    min_tokens: int
    stop: tuple[int, ...]
    add_at: int

    def request(self, name: str) -> Request:
        sampling = SamplingParams(
            max_tokens=self.max_tokens, min_tokens=self.min_tokens, stop_token_ids=self.stop, seed=len(name)
        )
        return Request(name, self.prompt, sampling, n=self.n, best_of=self.best_of, priority=self.priority)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    head = draw(st.sampled_from([[], [1, 2, 3, 4, 5, 6], [9] * 10]))
    prompt = head + draw(st.lists(st.integers(1, 20), min_size=0 if head else 1, max_size=20))
    max_tokens = draw(st.integers(1, MAX_MODEL_LEN - len(prompt)))
    n = draw(st.integers(1, 3))
    return Spec(
        prompt=prompt,
        max_tokens=max_tokens,
        n=n,
        best_of=draw(st.sampled_from([None, n, n + 1])),
        priority=draw(st.integers(0, 1)),
        min_tokens=draw(st.integers(0, min(3, max_tokens))),
        stop=draw(st.sampled_from([(), (7,)])),
        add_at=draw(st.integers(0, 6)),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    block_size=st.sampled_from([1, 2, 4, 8]),
    extra_blocks=st.integers(0, 12),
    max_num_seqs=st.integers(1, 6),
    budget=st.integers(1, 40),
    chunked=st.booleans(),
    caching=st.booleans(),
    steps=st.sampled_from([1, 2, 4]),
    workload=st.lists(specs(), min_size=1, max_size=6),
    aborts=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5)), max_size=3),
)
def test_any_configuration_gives_every_request_its_own_tokens(
    block_size: int,
    extra_blocks: int,
    max_num_seqs: int,
    budget: int,
    chunked: bool,
    caching: bool,
    steps: int,
    workload: list[Spec],
    aborts: list[tuple[int, int]],
) -> None:
    names = [f"r{i}" for i in range(len(workload))]
    max_num_seqs = max(max_num_seqs, *(spec.best_of or spec.n for spec in workload))
    scheduler, worker = make(
        num_blocks=-(-MAX_MODEL_LEN // block_size) + extra_blocks,
        eos_token_ids=[EOS],
        next_token=small_vocab,
        block_size=block_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget if chunked else MAX_MODEL_LEN,
        max_model_len=MAX_MODEL_LEN,
        enable_chunked_prefill=chunked,
        enable_prefix_caching=caching,
        num_scheduler_steps=steps,
    )
    aborted: set[str] = set()

    def before_step(i: int) -> None:
        for spec, name in zip(workload, names, strict=True):
            if spec.add_at == i:
                scheduler.add_request(spec.request(name))
        for at, which in aborts:
            name = names[which % len(names)]
            if at == i and scheduler.abort(name) is not None:
                aborted.add(name)

    # Requests arrive over the first steps, then run to the end.
    results = Results()
    last_arrival = max(spec.add_at for spec in workload)
    for i in range(last_arrival + 1):
        before_step(i)
        step_once(scheduler, worker, results)
    run(scheduler, worker, results=results, before_step=lambda i: before_step(i + last_arrival + 1))
    event(f"preempted: {scheduler.num_preemptions > 0}")
    event(f"copy-on-write: {any(s.input.block_copies for s in results.steps)}")
    event(f"multi-step: {any(s.input.num_steps > 1 for s in results.steps)}")
    event(f"aborted: {bool(aborted)}")

    alone = run(
        *make(num_blocks=512, eos_token_ids=[EOS], next_token=small_vocab, max_model_len=MAX_MODEL_LEN),
        [spec.request(name) for spec, name in zip(workload, names, strict=True) if name not in aborted],
    )
    finished = {key: tokens for key, tokens in results.tokens.items() if key[0] not in aborted}
    assert finished == alone.tokens
    assert {k: v for k, v in results.finish.items() if k[0] not in aborted} == alone.finish
