"""Seeded rows draw from a counter-based stream: the same request gets the
same tokens alone or anywhere in any batch, whatever its neighbours do."""

from __future__ import annotations

import pytest
import torch

from cairn.services.worker import rng
from cairn.services.worker.sampler import Sampler, SamplingBatch
from cairn.services.worker.sampling_params import SamplingParams

VOCAB = 64
STEPS = 40
TARGET = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=1234)
PROMPT = [5, 6, 7]

MASK64 = (1 << 64) - 1


def splitmix64_reference(x: int) -> int:
    x &= MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def test_splitmix64_matches_the_reference_bit_for_bit(device) -> None:
    values = [0, 1, 2, 12345, 2**31, 2**32 + 5, 2**63 - 1, 2**63, 2**64 - 1, 0xDEADBEEFCAFEF00D]
    mixed = rng.splitmix64(torch.tensor([rng.to_int64(v) for v in values], device=device))
    assert [v & MASK64 for v in mixed.tolist()] == [splitmix64_reference(v) for v in values]


def test_to_int64_keeps_the_low_64_bits() -> None:
    assert rng.to_int64(5) == 5
    assert rng.to_int64(2**64 - 1) == -1
    assert rng.to_int64(-1) == -1
    assert rng.to_int64(2**64 + 3) == 3
    assert rng.to_int64(2**63) == -(2**63)


def test_uniforms_lie_strictly_inside_the_unit_interval(device) -> None:
    seeds = torch.tensor([0, -1, 2**62, 99], device=device)
    u = rng.uniform(seeds, torch.tensor([0, 7, 3, 2**40], device=device), 50000)
    assert u.dtype == torch.float64
    assert (u > 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.005
    e = rng.exponential(seeds, torch.zeros(4, dtype=torch.int64, device=device), 50000)
    assert (e > 0).all() and e.isfinite().all()
    assert abs(e.mean().item() - 1.0) < 0.02


def step_logits(step: int) -> torch.Tensor:
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(step)) * 2.0


def generate(device: torch.device, row: int, neighbours: list[SamplingParams]) -> list[int]:
    """Runs TARGET at `row` among `neighbours` for STEPS steps; every row's
    output grows with its own tokens, and neighbours see fresh random logits."""
    params = [*neighbours[:row], TARGET, *neighbours[row:]]
    outputs: list[list[int]] = [[] for _ in params]
    noise = torch.Generator().manual_seed(100 + row + len(params))
    sampler = Sampler()
    for step in range(STEPS):
        logits = torch.randn(len(params), VOCAB, generator=noise) * 3.0
        logits[row] = step_logits(step)
        batch = SamplingBatch.build(params, [PROMPT] * len(params), outputs, VOCAB, device)
        tokens = sampler(logits.to(device), batch).token_ids.tolist()
        for output, token in zip(outputs, tokens, strict=True):
            output.append(token)
    return outputs[row]


NEIGHBOURS_8 = [
    SamplingParams(),
    SamplingParams(temperature=0.0),
    SamplingParams(seed=7, top_p=0.5),
    SamplingParams(temperature=1.3, top_k=3),
    SamplingParams(seed=1234, temperature=0.5),
    SamplingParams(presence_penalty=1.0, logprobs=3),
    SamplingParams(min_p=0.2, seed=99),
]
NEIGHBOURS_3 = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.7, frequency_penalty=0.5)]


def test_seeded_tokens_do_not_depend_on_the_batch(device) -> None:
    torch.manual_seed(0)
    alone = generate(device, 0, [])
    assert len(set(alone)) > 10, "the stream should move with the position"
    assert generate(device, 0, NEIGHBOURS_8) == alone
    assert generate(device, 5, NEIGHBOURS_8) == alone
    assert generate(device, 2, NEIGHBOURS_3) == alone
    # Unseeded neighbours consume torch's generator; the target must not care.
    torch.manual_seed(12345)
    assert generate(device, 7, NEIGHBOURS_8) == alone


def test_other_seeds_give_other_tokens(device) -> None:
    logits = torch.zeros(64, VOCAB, device=device)
    params = [SamplingParams(seed=seed) for seed in range(64)]
    tokens = Sampler()(logits, SamplingBatch.build(params, [[]] * 64, [[]] * 64, VOCAB, device)).token_ids
    # 64 uniform draws over 64 tokens hit about 41 distinct ones.
    assert len(set(tokens.tolist())) > 30


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seeded_noise_is_identical_on_cpu_and_cuda() -> None:
    seeds = torch.tensor([1234, -5, 2**62 + 1])
    positions = torch.tensor([0, 3, 1000])
    on_cpu = rng.uniform(seeds, positions, 4096)
    on_cuda = rng.uniform(seeds.cuda(), positions.cuda(), 4096).cpu()
    assert torch.equal(on_cpu, on_cuda)
