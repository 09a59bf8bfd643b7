"""Triton paged decode and prefill attention against the references.

Caches are filled with NaN outside the sequences' slots and block tables are
padded with -1 (see conftest.build_paged_context), so a kernel that reads a
slot it should not, or an unused table entry, fails these comparisons.
"""

from __future__ import annotations

import pytest
import torch

from cairn.kernels import reference

TOL = {"rtol": 1e-5, "atol": 1e-5}
HEADS = [(4, 2), (4, 1), (6, 2)]  # GQA, MQA, a group size that is not a power of two


def _queries(n: int, n_heads: int, head_dim: int, device: torch.device, seed: int) -> torch.Tensor:
    return torch.randn(n, n_heads, head_dim, generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize(("n_heads", "n_kv_heads"), HEADS)
@pytest.mark.parametrize("block_size", [5, 16])
@pytest.mark.parametrize("num_splits", [None, 1, 4])
def test_decode(triton_ops, device, paged_context, n_heads, n_kv_heads, block_size, num_splits) -> None:
    # Lengths straddle block and 64-key tile boundaries; 0 is a CUDA-graph padding row.
    context_lens = [37, 0, 130, 1, 64]
    ctx = paged_context(context_lens, n_kv_heads, 16, block_size, torch.float32, device, seed=1)
    q = _queries(len(context_lens), n_heads, 16, device, seed=2)
    args = (q, ctx.k_cache, ctx.v_cache, ctx.block_tables, ctx.seq_lens, 0.25)
    out = triton_ops.paged_decode_attention(*args, num_splits=num_splits)
    torch.testing.assert_close(out, reference.paged_decode_attention(*args), **TOL)
    assert torch.equal(out[1], torch.zeros_like(out[1]))


@pytest.mark.parametrize(("n_heads", "n_kv_heads"), HEADS)
def test_decode_merges_many_splits_in_one_launch(triton_ops, device, paged_context, n_heads, n_kv_heads):
    # With 8 splits of whole 128-key tiles, 700 keys occupy 6 splits, 300 keys 3 and 128 keys
    # one (no merge); the last split of each (sequence, kv head) to finish merges them.
    from cairn.kernels.triton_ops.scratch import scratch

    context_lens = [700, 300, 0, 128, 129]
    ctx = paged_context(context_lens, n_kv_heads, 16, 16, torch.float32, device, seed=8)
    q = _queries(len(context_lens), n_heads, 16, device, seed=9)
    args = (q, ctx.k_cache, ctx.v_cache, ctx.block_tables, ctx.seq_lens, 0.25)
    expected = reference.paged_decode_attention(*args)
    for _ in range(2):
        out = triton_ops.paged_decode_attention(*args, num_splits=8)
        torch.testing.assert_close(out, expected, **TOL)
        # Each merge resets its arrival count, so the next launch (or graph replay) starts at zero.
        assert not scratch("decode_arrivals", q.device, 0, torch.int32, zeroed=True).any()


def test_decode_head_dim_not_power_of_two(triton_ops, device, paged_context) -> None:
    ctx = paged_context([19, 70], 2, 24, 8, torch.float32, device, seed=3)
    q = _queries(2, 4, 24, device, seed=4)
    args = (q, ctx.k_cache, ctx.v_cache, ctx.block_tables, ctx.seq_lens, 24**-0.5)
    for num_splits in (1, 2):
        out = triton_ops.paged_decode_attention(*args, num_splits=num_splits)
        torch.testing.assert_close(out, reference.paged_decode_attention(*args), **TOL)


def test_decode_all_rows_padding(triton_ops, device, paged_context) -> None:
    ctx = paged_context([3, 0], 1, 16, 4, torch.float32, device, seed=5)
    seq_lens = torch.zeros(2, dtype=torch.int32, device=device)
    q = _queries(2, 2, 16, device, seed=6)
    for num_splits in (1, 2):
        out = triton_ops.paged_decode_attention(
            q, ctx.k_cache, ctx.v_cache, ctx.block_tables, seq_lens, 1.0, num_splits=num_splits
        )
        assert torch.equal(out, torch.zeros_like(q))


def test_decode_rejects_split_count_not_power_of_two(triton_ops, device, paged_context) -> None:
    ctx = paged_context([3], 1, 16, 4, torch.float32, device)
    q = _queries(1, 1, 16, device, seed=7)
    with pytest.raises(ValueError, match="power of two"):
        triton_ops.paged_decode_attention(
            q, ctx.k_cache, ctx.v_cache, ctx.block_tables, ctx.seq_lens, 1.0, num_splits=3
        )


def _prefill_case(chunks, n_heads, n_kv_heads, head_dim, block_size, device, paged_context, seed):
    """chunks: (cached prefix, new queries) per sequence."""
    context_lens = [prefix + n for prefix, n in chunks]
    ctx = paged_context(context_lens, n_kv_heads, head_dim, block_size, torch.float32, device, seed=seed)
    q = _queries(sum(n for _, n in chunks), n_heads, head_dim, device, seed=seed + 1)
    query_start_loc = torch.tensor([0] + [n for _, n in chunks]).cumsum(0).to(torch.int32).to(device)
    return q, ctx.k_cache, ctx.v_cache, ctx.block_tables, query_start_loc, ctx.seq_lens


@pytest.mark.parametrize(("n_heads", "n_kv_heads"), HEADS)
@pytest.mark.parametrize("block_size", [5, 16])
def test_prefill_with_cached_prefix(triton_ops, device, paged_context, n_heads, n_kv_heads, block_size):
    # Fresh prompt spanning several query tiles, a chunk after a long prefix
    # (so whole key tiles take the unmasked path), a one-token chunk and an
    # idle sequence with nothing scheduled.
    chunks = [(0, 70), (75, 40), (13, 1), (6, 0), (2, 9)]
    args = _prefill_case(chunks, n_heads, n_kv_heads, 16, block_size, device, paged_context, seed=10)
    out = triton_ops.prefill_attention(*args, 0.25)
    torch.testing.assert_close(out, reference.prefill_attention(*args, 0.25), **TOL)


def test_prefill_head_dim_not_power_of_two(triton_ops, device, paged_context) -> None:
    args = _prefill_case([(20, 30), (0, 5)], 2, 2, 24, 7, device, paged_context, seed=20)
    out = triton_ops.prefill_attention(*args, 24**-0.5)
    torch.testing.assert_close(out, reference.prefill_attention(*args, 24**-0.5), **TOL)


def test_prefill_single_sequence_without_prefix(triton_ops, device, paged_context) -> None:
    args = _prefill_case([(0, 33)], 4, 4, 16, 16, device, paged_context, seed=30)
    out = triton_ops.prefill_attention(*args, 0.25)
    torch.testing.assert_close(out, reference.prefill_attention(*args, 0.25), **TOL)


def test_prefill_of_one_token_equals_decode(triton_ops, device, paged_context) -> None:
    # A decode step is a prefill chunk of one query at the end of the context.
    args = _prefill_case([(40, 1), (0, 1), (99, 1)], 4, 2, 16, 8, device, paged_context, seed=40)
    q, k_cache, v_cache, block_tables, _, seq_lens = args
    prefill = triton_ops.prefill_attention(*args, 0.25)
    decode = triton_ops.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, 0.25)
    torch.testing.assert_close(prefill, decode, **TOL)
