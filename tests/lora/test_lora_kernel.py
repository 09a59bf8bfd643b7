"""The batched LoRA Triton kernel against its torch reference, and the reference against a
per-token loop of plain matmuls (the definition).

Without CUDA the Triton side runs under TRITON_INTERPRET=1 (tests/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from cairn import kernels
from cairn.kernels import reference, triton_ops
from cairn.kernels.reference.lora import lora_segments

# (tokens, in features, slot count, rank, slice offsets)
SHAPES = [
    (1, 32, 1, 8, [0, 48]),
    (37, 48, 3, 8, [0, 32, 40, 48]),
    (70, 40, 4, 16, [0, 96, 192]),
    (600, 24, 2, 4, [0, 20]),
]


def _case(tokens: int, k: int, slots: int, rank: int, offsets: list[int], pattern: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n, num_slices = offsets[-1], len(offsets) - 1
    x = torch.randn(tokens, k, generator=gen)
    a = torch.randn(slots, num_slices, rank, k, generator=gen) / k**0.5
    b = torch.randn(slots, n, rank, generator=gen)
    y = torch.randn(tokens, n, generator=gen)
    if pattern == "mixed":
        token_slots = torch.randint(-1, slots, (tokens,), generator=gen)
    elif pattern == "none":
        token_slots = torch.full((tokens,), -1)
    elif pattern == "one":
        token_slots = torch.full((tokens,), slots - 1)
    else:  # contiguous runs, as prefill chunks of one sequence give
        token_slots = (torch.arange(tokens) * (slots + 1) // tokens) - 1
    return y, x, a, b, token_slots.to(torch.int32)


def _per_token(y, x, a, b, token_slots, offsets):
    out = y.clone()
    for t, slot in enumerate(token_slots.tolist()):
        if slot < 0:
            continue
        for s in range(len(offsets) - 1):
            lo, hi = offsets[s], offsets[s + 1]
            out[t, lo:hi] += (x[t] @ a[slot, s].T) @ b[slot, lo:hi].T
    return out


def test_segments_group_tokens_by_slot() -> None:
    token_slots = torch.tensor([2, -1, 0, 2, 0, -1, 1], dtype=torch.int32)
    order, starts = lora_segments(token_slots, 4)
    assert starts.tolist() == [0, 2, 3, 5, 5]
    assert order.tolist()[:5] == [2, 4, 6, 0, 3]
    assert sorted(order.tolist()[5:]) == [1, 5]
    assert order.dtype == starts.dtype == torch.int32


@pytest.mark.parametrize("pattern", ["mixed", "runs", "none", "one"])
def test_reference_is_the_per_token_definition(pattern: str) -> None:
    tokens, k, slots, rank, offsets = SHAPES[1]
    y, x, a, b, token_slots = _case(tokens, k, slots, rank, offsets, pattern)
    order, starts = lora_segments(token_slots, slots)
    out = reference.add_lora(y.clone(), x, a, b, order, starts, offsets)
    torch.testing.assert_close(out, _per_token(y, x, a, b, token_slots, offsets), rtol=1e-5, atol=1e-5)
    if pattern == "none":
        assert torch.equal(out, y)
    else:
        assert not torch.allclose(out, y)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"t{s[0]}-k{s[1]}-l{s[2]}-r{s[3]}-s{len(s[4]) - 1}")
@pytest.mark.parametrize("pattern", ["mixed", "runs", "none", "one"])
def test_triton_matches_reference(shape, pattern: str) -> None:
    tokens, _, slots, _, offsets = shape
    device = "cuda" if torch.cuda.is_available() else "cpu"
    y, x, a, b, token_slots = (t.to(device) for t in _case(*shape, pattern, seed=tokens))
    order, starts = lora_segments(token_slots, slots)
    expected = reference.add_lora(y.clone(), x, a, b, order, starts, offsets)
    out = y.clone()
    returned = triton_ops.add_lora(out, x, a, b, order, starts, offsets)
    assert returned is out
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


def test_triton_leaves_tokens_without_adapter_and_padding_untouched() -> None:
    # Rows past the segments (CUDA-graph padding) hold NaN in x: they must be neither read nor written.
    slots, offsets = SHAPES[2][2], SHAPES[2][4]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    y, x, a, b, token_slots = (t.to(device) for t in _case(*SHAPES[2], "mixed"))
    token_slots[-5:] = -1
    x[-5:] = float("nan")
    order, starts = lora_segments(token_slots, slots)
    out = triton_ops.add_lora(y.clone(), x, a, b, order, starts, offsets)
    untouched = token_slots < 0
    assert torch.equal(out[untouched], y[untouched])
    assert not torch.isnan(out).any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tokens", [1, 8, 256, 2048])
def test_triton_bf16_on_cuda(tokens: int) -> None:
    # Llama-3-8B's q/k/v projection, 8 rank-16 adapters, a quarter of the tokens on the base.
    k, slots, rank, offsets = 4096, 8, 16, [0, 4096, 5120, 6144]
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, k, generator=gen).cuda().bfloat16()
    a = (torch.randn(slots, 3, rank, k, generator=gen) / k**0.5).cuda().bfloat16()
    b = (torch.randn(slots, offsets[-1], rank, generator=gen) * 0.1).cuda().bfloat16()
    y = torch.randn(tokens, offsets[-1], generator=gen).cuda().bfloat16()
    token_slots = torch.randint(-2, slots, (tokens,), generator=gen).clamp(min=-1).int().cuda()
    order, starts = lora_segments(token_slots, slots)
    expected = reference.add_lora(y.clone(), x, a, b, order, starts, offsets)
    out = kernels.add_lora(y.clone(), x, a, b, order, starts, offsets)
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
