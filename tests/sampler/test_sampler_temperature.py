"""Random draws follow softmax(logits / T), from torch's generator and from
the counter-based seeded stream alike (fixed seeds, so deterministic)."""

from __future__ import annotations

import pytest
import torch
from sampler_stats import CHI_SQUARE_BOUND, chi_square

from cairn.services.worker.sampling_params import SamplingParams

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, -2.0])
DRAWS = 20000


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_unseeded_draws_follow_the_tempered_softmax(sample, temperature: float) -> None:
    torch.manual_seed(1)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(1)
    params = [SamplingParams(temperature=temperature)] * DRAWS
    tokens = sample(LOGITS.expand(DRAWS, -1), params).token_ids
    assert chi_square(tokens, (LOGITS / temperature).softmax(-1)) < CHI_SQUARE_BOUND


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_seeded_draws_across_seeds_follow_the_tempered_softmax(sample, temperature: float) -> None:
    params = [SamplingParams(temperature=temperature, seed=seed) for seed in range(DRAWS)]
    tokens = sample(LOGITS.expand(DRAWS, -1), params).token_ids
    assert chi_square(tokens, (LOGITS / temperature).softmax(-1)) < CHI_SQUARE_BOUND


def test_one_seed_across_output_positions_follows_the_softmax(sample) -> None:
    # The stream position is the output length: one seed walked over DRAWS steps.
    params = [SamplingParams(temperature=0.8, seed=2**40 + 7)] * DRAWS
    outputs = [range(position) for position in range(DRAWS)]
    tokens = sample(LOGITS.expand(DRAWS, -1), params, outputs=outputs).token_ids
    assert chi_square(tokens, (LOGITS / 0.8).softmax(-1)) < CHI_SQUARE_BOUND


def test_a_low_temperature_concentrates_on_the_best_token(sample) -> None:
    torch.manual_seed(2)
    tokens = sample(LOGITS.expand(1000, -1), [SamplingParams(temperature=0.05)] * 1000).token_ids
    assert (tokens == 0).all()
