"""logit_bias, penalties and min_tokens, exactly as OpenAI and HF define them."""

from __future__ import annotations

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from cairn.services.worker.sampler import Sampler, adjusted_logits
from cairn.services.worker.sampling_params import SamplingParams

LOGITS = torch.tensor([[1.0, -2.0, 0.5, 3.0, -0.25, 0.0]])


def adjust(build, device, params: list[SamplingParams], logits: torch.Tensor, **kwargs) -> torch.Tensor:
    batch = build(params, logits.shape[-1], **kwargs)
    return adjusted_logits(logits.to(device), batch).cpu()


def test_presence_and_frequency_penalties_follow_openai(build, device) -> None:
    params = [SamplingParams(presence_penalty=0.5, frequency_penalty=0.3)]
    # Prompt tokens never count: token 2 appears only there.
    got = adjust(build, device, params, LOGITS, prompts=[[2, 2, 5]], outputs=[[1, 1, 3, 1]])
    # logit -= presence * (count > 0) + frequency * count
    expected = torch.tensor([[1.0, -2.0 - 0.5 - 0.9, 0.5, 3.0 - 0.5 - 0.3, -0.25, 0.0]])
    torch.testing.assert_close(got, expected)


def test_negative_presence_and_frequency_encourage_repeats(build, device) -> None:
    params = [SamplingParams(presence_penalty=-1.0, frequency_penalty=-0.5)]
    got = adjust(build, device, params, LOGITS, outputs=[[4, 4]])
    expected = LOGITS.clone()
    expected[0, 4] += 1.0 + 2 * 0.5
    torch.testing.assert_close(got, expected)


def test_logit_bias_adds_to_the_named_tokens(build, device) -> None:
    params = [SamplingParams(logit_bias={0: -100.0, 5: 2.5}), SamplingParams(logit_bias={1: 1.0})]
    got = adjust(build, device, params, LOGITS.expand(2, -1))
    expected = LOGITS.expand(2, -1).clone()
    expected[0, 0] -= 100.0
    expected[0, 5] += 2.5
    expected[1, 1] += 1.0
    torch.testing.assert_close(got, expected)


def test_logit_bias_comes_before_the_repetition_penalty(build, device) -> None:
    # Token 1: -2 + 4 = 2, then divided by 2 -> 1 (penalty first would give 0).
    params = [SamplingParams(logit_bias={1: 4.0}, repetition_penalty=2.0)]
    got = adjust(build, device, params, LOGITS, outputs=[[1]])
    assert got[0, 1].item() == 1.0


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_matches_hf(build, device, penalty: float) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 50, generator=generator) * 4
    prompts = [[1, 2, 3, 3, 40], [], [49, 0]]
    outputs = [[7, 2, 7], [9, 10], []]
    params = [SamplingParams(repetition_penalty=penalty)] * 3
    got = adjust(build, device, params, logits, prompts=prompts, outputs=outputs)
    hf = RepetitionPenaltyLogitsProcessor(penalty)
    for row in range(3):
        input_ids = torch.tensor([prompts[row] + outputs[row]], dtype=torch.int64)
        expected = hf(input_ids, logits[row : row + 1].clone())
        torch.testing.assert_close(got[row : row + 1], expected, rtol=0, atol=0)


def test_penalties_leave_rows_without_them_unchanged(build, device) -> None:
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(4))
    params = [
        SamplingParams(),
        SamplingParams(repetition_penalty=1.5, frequency_penalty=1.0),
        SamplingParams(),
    ]
    outputs = [[1, 2, 3]] * 3
    got = adjust(build, device, params, logits, prompts=[[4, 5]] * 3, outputs=outputs)
    torch.testing.assert_close(got[[0, 2]], logits[[0, 2]], rtol=0, atol=0)
    assert not torch.equal(got[1], logits[1])


def test_the_sampler_leaves_the_callers_logits_alone(build, device) -> None:
    logits = LOGITS.to(device)
    before = logits.clone()
    params = [SamplingParams(temperature=0.5, top_p=0.5, logit_bias={0: 5.0}, repetition_penalty=1.5)]
    Sampler()(logits, build(params, 6, outputs=[[3]]))
    assert torch.equal(logits, before)


EOS = 3
STOP = 1


@pytest.mark.parametrize("greedy", [True, False])
def test_min_tokens_bans_eos_and_stop_ids_until_reached(sample, greedy: bool) -> None:
    # EOS and the stop id dominate; only the ban can keep them from winning.
    logits = torch.tensor([[0.0, 9.0, 1.0, 10.0, -1.0]]).expand(200, -1)
    temperature = 0.0 if greedy else 1.0
    params = [SamplingParams(temperature=temperature, min_tokens=4, stop_token_ids=(STOP,))] * 200
    torch.manual_seed(0)
    early = sample(logits, params, outputs=[[2, 2, 2]] * 200, eos_token_id=EOS).token_ids
    assert not ((early == EOS) | (early == STOP)).any()
    reached = sample(logits, params, outputs=[[2, 2, 2, 2]] * 200, eos_token_id=EOS).token_ids
    assert (reached == EOS).all() if greedy else (reached == EOS).any()


def test_min_tokens_with_ignore_eos_bans_only_stop_ids(build, device) -> None:
    params = [
        SamplingParams(min_tokens=2, stop_token_ids=(STOP,), ignore_eos=True),
        SamplingParams(min_tokens=2, stop_token_ids=(STOP, 4)),
        SamplingParams(min_tokens=2),
    ]
    logits = LOGITS[:, :5].expand(3, -1)
    got = adjust(build, device, params, logits, outputs=[[0]] * 3, eos_token_id=EOS)
    banned = got.isneginf()
    assert banned[0].nonzero().flatten().tolist() == [STOP]
    assert banned[1].nonzero().flatten().tolist() == [STOP, EOS, 4]
    assert banned[2].nonzero().flatten().tolist() == [EOS]
    # Without a model EOS only the request's own stop ids are held back.
    got = adjust(build, device, params[1:2], LOGITS[:, :5], outputs=[[0]])
    assert got.isneginf()[0].nonzero().flatten().tolist() == [STOP, 4]
