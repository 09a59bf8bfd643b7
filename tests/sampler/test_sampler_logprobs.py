"""Greedy picks and logprobs: the raw model distribution, whatever the sampling settings."""

from __future__ import annotations

import pytest
import torch

from cairn.services.worker.sampler import Sampler, prompt_logprobs
from cairn.services.worker.sampling_params import SamplingParams

VOCAB = 40


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_all_greedy_is_argmax_with_no_logprobs(build, sample) -> None:
    logits = random_logits(16)
    params = [SamplingParams(temperature=0.0, top_k=5, top_p=0.5, seed=3)] * 16
    assert build(params, VOCAB).argmax_only
    out = sample(logits, params)
    assert torch.equal(out.token_ids.cpu(), logits.argmax(-1))
    assert out.logprobs is None and out.top_ids is None and out.top_logprobs is None


def test_greedy_rows_take_the_argmax_beside_random_rows(sample) -> None:
    logits = random_logits(6, seed=1)
    greedy = SamplingParams(temperature=0.0, logprobs=1)
    params = [greedy, SamplingParams(temperature=2.0), greedy, SamplingParams(top_k=2), greedy, greedy]
    tokens = sample(logits, params).token_ids.cpu()
    rows = [0, 2, 4, 5]
    assert torch.equal(tokens[rows], logits[rows].argmax(-1))


def test_a_vanishing_temperature_is_greedy(build, sample) -> None:
    logits = random_logits(4, seed=6) * 1e4
    params = [SamplingParams(temperature=1e-9), SamplingParams(), SamplingParams(temperature=1e-36)] * 2
    logits = torch.cat([logits, logits[:2]])
    assert build(params, VOCAB).greedy.tolist() == [True, False, True] * 2
    tokens = sample(logits, params).token_ids.cpu()
    assert torch.equal(tokens[[0, 2, 3, 5]], logits[[0, 2, 3, 5]].argmax(-1))


def test_greedy_takes_the_argmax_after_bias_and_penalties(sample) -> None:
    logits = torch.tensor([[0.0, 5.0, 4.0, 1.0]])
    params = [SamplingParams(temperature=0.0, logit_bias={3: 10.0}), SamplingParams(temperature=0.0)]
    presence = [SamplingParams(temperature=0.0, presence_penalty=2.0)]
    assert sample(logits.expand(2, -1), params).token_ids.tolist() == [3, 1]
    assert sample(logits, presence, outputs=[[1]]).token_ids.tolist() == [2]


def test_logprobs_are_the_raw_log_softmax(sample) -> None:
    logits = random_logits(5, seed=2)
    params = [
        SamplingParams(temperature=0.0, logprobs=2),
        SamplingParams(temperature=0.3, top_k=3, logprobs=5, repetition_penalty=1.5),
        SamplingParams(logprobs=0, logit_bias={0: 50.0}),
        SamplingParams(top_p=0.1, presence_penalty=2.0),
        SamplingParams(min_p=0.5, logprobs=1, seed=5),
    ]
    out = sample(logits, params, outputs=[[1, 2]] * 5)
    expected = logits.log_softmax(-1)
    tokens = out.token_ids.cpu()
    assert tokens[2].item() == 0, "the bias decides the token, not the logprob"
    torch.testing.assert_close(out.logprobs.cpu(), expected.gather(1, tokens[:, None]).squeeze(1))
    # k is the largest request in the batch; rows read the prefix they asked for.
    assert out.top_ids.shape == out.top_logprobs.shape == (5, 5)
    top_values, top_ids = expected.topk(5, dim=-1)
    assert torch.equal(out.top_ids.cpu(), top_ids)
    torch.testing.assert_close(out.top_logprobs.cpu(), top_values)
    assert (out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:]).all()


def test_logprobs_zero_returns_only_the_chosen_token(sample) -> None:
    logits = random_logits(2, seed=3)
    out = sample(logits, [SamplingParams(temperature=0.0, logprobs=0), SamplingParams()])
    assert out.top_ids.shape == (2, 0) and out.top_logprobs.shape == (2, 0)
    torch.testing.assert_close(out.logprobs[0].cpu(), logits[0].log_softmax(-1).max())


def test_no_logprobs_requested_returns_none(sample) -> None:
    out = sample(random_logits(3, seed=4), [SamplingParams(top_k=4, presence_penalty=1.0)] * 3)
    assert out.logprobs is None and out.top_ids is None and out.top_logprobs is None


def test_prompt_logprobs_score_each_next_token(device) -> None:
    logits = random_logits(7, seed=5).to(device)
    next_ids = torch.tensor([3, 0, 39, 7, 7, 12, 1], device=device)
    chosen, top_ids, top_logprobs = prompt_logprobs(logits, next_ids, 4)
    expected = logits.log_softmax(-1)
    torch.testing.assert_close(chosen, expected[torch.arange(7), next_ids])
    values, ids = expected.topk(4, dim=-1)
    assert torch.equal(top_ids, ids)
    torch.testing.assert_close(top_logprobs, values)


def test_logits_must_match_the_batch(build, device) -> None:
    batch = build([SamplingParams(temperature=0.0)] * 2, VOCAB)
    with pytest.raises(ValueError, match="vocabulary of 40"):
        Sampler()(torch.zeros(2, VOCAB + 8, device=device), batch)
    with pytest.raises(ValueError, match="2 rows"):
        Sampler()(torch.zeros(3, VOCAB, device=device), batch)
