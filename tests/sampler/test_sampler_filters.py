"""Top-k, top-p and min-p: the support they leave, checked on the filtered
distribution itself and over many draws, on a known distribution whose
tokens are shuffled so that sorting and scattering back are exercised."""

from __future__ import annotations

import pytest
import torch
from sampler_stats import CHI_SQUARE_BOUND, chi_square

from cairn.services.worker.sampler import adjusted_logits, warped_logits
from cairn.services.worker.sampling_params import SamplingParams

PROBS = torch.tensor([0.35, 0.25, 0.15, 0.10, 0.08, 0.07])
# Token ids of PROBS[0], PROBS[1], ... in the shuffled vocabulary.
ORDER = torch.tensor([4, 0, 5, 2, 1, 3])
DRAWS = 4000


def shuffled_logits(rows: int = 1) -> torch.Tensor:
    logits = torch.empty(len(PROBS))
    logits[ORDER] = PROBS.log()
    return logits.expand(rows, -1)


def best(n: int) -> set[int]:
    return set(ORDER[:n].tolist())


def kept_tokens(build, device: torch.device, params: list[SamplingParams]) -> list[set[int]]:
    """Per row, the tokens the filtered distribution keeps (finite warped logits)."""
    batch = build(params, len(PROBS))
    logits = shuffled_logits(len(params)).to(device)
    kept = warped_logits(adjusted_logits(logits, batch), batch).isfinite().cpu()
    return [set(row.nonzero().flatten().tolist()) for row in kept]


def draw(sample, params: SamplingParams) -> torch.Tensor:
    torch.manual_seed(0)
    return sample(shuffled_logits(DRAWS), [params] * DRAWS).token_ids


def smallest_prefix_reaching(p: float) -> int:
    mass = 0.0
    for n, q in enumerate(PROBS.tolist(), start=1):
        mass += q
        if mass >= p:
            return n
    return len(PROBS)


def renormalized_best(n: int) -> torch.Tensor:
    probs = torch.zeros(len(PROBS))
    probs[ORDER[:n]] = PROBS[:n] / PROBS[:n].sum()
    return probs


@pytest.mark.parametrize("k", [1, 2, 4, 6, 50])
def test_top_k_keeps_exactly_the_k_best(build, sample, device, k: int) -> None:
    params = SamplingParams(top_k=k)
    n = min(k, len(PROBS))
    assert kept_tokens(build, device, [params]) == [best(n)]
    assert chi_square(draw(sample, params), renormalized_best(n)) < CHI_SQUARE_BOUND


@pytest.mark.parametrize("p", [0.2, 0.5, 0.7, 0.8, 0.9, 0.95])
def test_top_p_keeps_the_smallest_set_reaching_p(build, sample, device, p: float) -> None:
    n = smallest_prefix_reaching(p)
    params = SamplingParams(top_p=p)
    assert kept_tokens(build, device, [params]) == [best(n)]
    tokens = draw(sample, params)
    assert set(tokens.tolist()) == best(n)
    assert chi_square(tokens, renormalized_best(n)) < CHI_SQUARE_BOUND


@pytest.mark.parametrize("neighbour", [None, SamplingParams(top_p=0.7), SamplingParams(top_k=5, top_p=0.7)])
def test_top_p_applies_to_what_top_k_left(build, device, neighbour: SamplingParams | None) -> None:
    # After top-k=3 the mass renormalizes to (.467, .333, .2): top_p=0.7 keeps
    # two tokens, where the raw mass (.35 + .25 = .6) would have needed three.
    # A neighbour without top-k makes the filter sort the whole vocabulary;
    # alone, or beside another top-k row, it works on the top-k candidates.
    params = [SamplingParams(top_k=3, top_p=0.7)] + ([neighbour] if neighbour else [])
    kept = kept_tokens(build, device, params)
    assert kept[0] == best(2)
    if neighbour is not None:
        assert kept[1] == best(3)


@pytest.mark.parametrize(("min_p", "n"), [(0.2, 6), (0.25, 4), (0.5, 2), (0.9, 1), (1.0, 1)])
def test_min_p_drops_tokens_below_min_p_times_the_best(build, sample, device, min_p: float, n: int) -> None:
    # Thresholds 0.35 * min_p: 0.07, 0.0875, 0.175, 0.315, 0.35.
    params = SamplingParams(min_p=min_p)
    assert kept_tokens(build, device, [params]) == [best(n)]
    assert chi_square(draw(sample, params), renormalized_best(n)) < CHI_SQUARE_BOUND


def test_min_p_applies_to_the_tempered_distribution(build, device) -> None:
    # T=0.5 squares the probability ratios: 0.15/0.35 = 0.43 becomes 0.18 < 0.25.
    assert kept_tokens(build, device, [SamplingParams(temperature=0.5, min_p=0.25)]) == [best(2)]


def test_filters_apply_per_row(build, device) -> None:
    params = [
        SamplingParams(top_k=2),
        SamplingParams(),
        SamplingParams(top_p=0.5),
        SamplingParams(min_p=0.9),
        SamplingParams(temperature=0.0, top_k=1),
        SamplingParams(top_k=3, top_p=0.99),
        SamplingParams(top_k=4, min_p=0.5),
    ]
    # Greedy rows are never filtered: the argmax is all they use.
    expected = [best(2), best(6), best(2), best(1), best(6), best(3), best(2)]
    assert kept_tokens(build, device, params) == expected


def test_top_k_keeps_exactly_k_among_ties(build, device) -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0, 2.0]], device=device)
    for params in (SamplingParams(top_k=2), SamplingParams(top_k=2, top_p=0.999)):
        kept = warped_logits(logits, build([params], 6))[0].isfinite().cpu()
        assert kept.sum() == 2
        assert set(kept.nonzero().flatten().tolist()) <= {1, 2, 3}
