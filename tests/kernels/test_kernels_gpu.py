"""The compiled Triton kernels at realistic shapes in bf16 (Llama-3-8B attention: 32 q / 8 kv heads,
head_dim 128, block size 16, contexts up to 4k), against the references run on the same GPU tensors.

Run on a CUDA machine with `pytest tests/kernels -m gpu`.
"""

from __future__ import annotations

import pytest
import torch

import cairn.kernels
from cairn.kernels import reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

N_HEADS, N_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
SCALE = HEAD_DIM**-0.5
BF16 = torch.bfloat16


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * scale).to(device="cuda", dtype=BF16)


def assert_bf16_close(out: torch.Tensor, expected: torch.Tensor) -> None:
    assert out.dtype == expected.dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
    relative = (out.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-6)
    assert relative < 1e-2


def _queries(n: int, seed: int) -> torch.Tensor:
    # Scaled up so the softmax is peaked: outputs are O(1), not the near-zero
    # mean of thousands of random values, and a wrong key shows.
    return _randn(n, N_HEADS, HEAD_DIM, seed=seed, scale=3.0)


def test_dispatch_picks_triton_on_cuda(triton_ops) -> None:
    x = torch.zeros(1, device="cuda")
    assert cairn.kernels.backend_for(x) is triton_ops
    with cairn.kernels.force_reference():
        assert cairn.kernels.backend_for(x) is reference


def test_rms_norm(triton_ops) -> None:
    x = _randn(300, 4096, seed=0)
    residual = _randn(300, 4096, seed=1)
    weight = _randn(4096, seed=2)
    assert_bf16_close(triton_ops.rms_norm(x, weight, 1e-5), reference.rms_norm(x, weight, 1e-5))
    out, summed = triton_ops.rms_norm(x, weight, 1e-5, residual)
    expected_out, expected_sum = reference.rms_norm(x, weight, 1e-5, residual)
    assert torch.equal(summed, expected_sum)
    assert_bf16_close(out, expected_out)


def test_silu_and_mul(triton_ops) -> None:
    x = _randn(300, 2 * 14336, seed=3)
    assert_bf16_close(triton_ops.silu_and_mul(x), reference.silu_and_mul(x))


def test_apply_rotary(triton_ops) -> None:
    n_tokens = 513
    qkv = _randn(n_tokens, (N_HEADS + 2 * N_KV_HEADS) * HEAD_DIM, seed=4)
    q = qkv[:, : N_HEADS * HEAD_DIM].view(n_tokens, N_HEADS, HEAD_DIM)
    k = qkv[:, N_HEADS * HEAD_DIM : (N_HEADS + N_KV_HEADS) * HEAD_DIM].view(n_tokens, N_KV_HEADS, HEAD_DIM)
    rope_scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    cache = cairn.kernels.build_rope_cache(HEAD_DIM, 16384, 500000.0, rope_scaling, "cuda")
    positions = torch.randint(0, cache.shape[0], (n_tokens,), device="cuda")
    expected_q, expected_k = reference.apply_rotary(q, k, positions, cache)
    out_q, out_k = triton_ops.apply_rotary(q, k, positions, cache)
    assert_bf16_close(out_q, expected_q)
    assert_bf16_close(out_k, expected_k)


def test_write_kv_cache(triton_ops) -> None:
    n_tokens, n_blocks = 513, 64
    k = _randn(n_tokens, N_KV_HEADS, HEAD_DIM, seed=5)
    v = _randn(n_tokens, N_KV_HEADS, HEAD_DIM, seed=6)
    slots = torch.randperm(n_blocks * BLOCK_SIZE, device="cuda")[:n_tokens]
    slots[::7] = -1
    caches = [
        torch.zeros(n_blocks, BLOCK_SIZE, N_KV_HEADS, HEAD_DIM, dtype=BF16, device="cuda") for _ in range(4)
    ]
    reference.write_kv_cache(k, v, caches[0], caches[1], slots)
    triton_ops.write_kv_cache(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[2], caches[0])
    assert torch.equal(caches[3], caches[1])


def test_rotary_and_cache(triton_ops) -> None:
    n_tokens, n_blocks = 513, 64
    width = (N_HEADS + 2 * N_KV_HEADS) * HEAD_DIM
    qkv = _randn(n_tokens, width, seed=16)
    bias = _randn(width, seed=17, scale=0.1)
    cache = cairn.kernels.build_rope_cache(HEAD_DIM, 16384, 500000.0, None, "cuda")
    positions = torch.randint(0, cache.shape[0], (n_tokens,), device="cuda", dtype=torch.int32)
    slots = torch.randperm(n_blocks * BLOCK_SIZE, device="cuda")[:n_tokens].int()
    slots[::7] = -1
    caches = [
        torch.zeros(n_blocks, BLOCK_SIZE, N_KV_HEADS, HEAD_DIM, dtype=BF16, device="cuda") for _ in range(4)
    ]
    expected = reference.rotary_and_cache(qkv, positions, cache, caches[0], caches[1], slots, bias)
    out = triton_ops.rotary_and_cache(qkv, positions, cache, caches[2], caches[3], slots, bias)
    assert_bf16_close(out, expected)
    assert_bf16_close(caches[2], caches[0])
    # v is only biased and stored, never rotated: bit-exact.
    assert torch.equal(caches[3], caches[1])


@pytest.mark.parametrize("num_splits", [None, 1])
def test_paged_decode_attention(triton_ops, paged_context, num_splits: int | None) -> None:
    context_lens = [4096, 1, 0, 517, 2048, 16, 3000, 33]
    ctx = paged_context(context_lens, N_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BF16, "cuda", seed=7)
    q = _queries(len(context_lens), seed=8)
    args = (q, ctx.k_cache, ctx.v_cache, ctx.block_tables, ctx.seq_lens, SCALE)
    out = triton_ops.paged_decode_attention(*args, num_splits=num_splits)
    assert_bf16_close(out, reference.paged_decode_attention(*args))
    assert torch.equal(out[2], torch.zeros_like(out[2]))


def test_paged_decode_attention_batch_one_long_context(triton_ops, paged_context) -> None:
    ctx = paged_context([4000], N_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BF16, "cuda", seed=9)
    q = _queries(1, seed=10)
    args = (q, ctx.k_cache, ctx.v_cache, ctx.block_tables, ctx.seq_lens, SCALE)
    # Batch 1 splits the context over the multiprocessors (flash-decoding).
    assert_bf16_close(triton_ops.paged_decode_attention(*args), reference.paged_decode_attention(*args))


def test_paged_decode_attention_replays_in_a_cuda_graph(triton_ops, paged_context) -> None:
    context_lens = [1000, 250, 300, 4096]
    ctx = paged_context(context_lens, N_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BF16, "cuda", seed=11)
    q = _queries(len(context_lens), seed=12)
    # Captured with row 1 as padding (seq_len 0).
    seq_lens = torch.tensor([1000, 0, 300, 4096], dtype=torch.int32, device="cuda")
    args = (q, ctx.k_cache, ctx.v_cache, ctx.block_tables, seq_lens, SCALE)
    triton_ops.paged_decode_attention(*args)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_ops.paged_decode_attention(*args)
    # A later step: new queries, other lengths, the padding row live.
    seq_lens.copy_(torch.tensor([999, 250, 299, 17], dtype=torch.int32))
    q.copy_(_queries(len(context_lens), seed=13))
    graph.replay()
    assert_bf16_close(out, reference.paged_decode_attention(*args))


def test_prefill_attention(triton_ops, paged_context) -> None:
    chunks = [(0, 1000), (1024, 512), (3000, 1096), (17, 1), (0, 7)]
    context_lens = [prefix + n for prefix, n in chunks]
    ctx = paged_context(context_lens, N_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BF16, "cuda", seed=14)
    q = _queries(sum(n for _, n in chunks), seed=15)
    query_start_loc = (
        torch.tensor([0] + [n for _, n in chunks]).cumsum(0).to(device="cuda", dtype=torch.int32)
    )
    args = (q, ctx.k_cache, ctx.v_cache, ctx.block_tables, query_start_loc, ctx.seq_lens, SCALE)
    assert_bf16_close(triton_ops.prefill_attention(*args), reference.prefill_attention(*args))


def test_paged_decode_attention_merges_across_many_replays(triton_ops, paged_context) -> None:
    # Batch 1 splits over every multiprocessor and the last split to finish merges: a merge
    # that read a partial before it was visible, or a count not reset, would show in some replay.
    from cairn.kernels.triton_ops.scratch import scratch

    ctx = paged_context([4096], N_KV_HEADS, HEAD_DIM, BLOCK_SIZE, BF16, "cuda", seed=18)
    q = _queries(1, seed=19)
    seq_lens = ctx.seq_lens.clone()
    args = (q, ctx.k_cache, ctx.v_cache, ctx.block_tables, seq_lens, SCALE)
    triton_ops.paged_decode_attention(*args)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_ops.paged_decode_attention(*args)
    for length in [4096, 4095, 1, 128, 129, 2049, 3000] * 8:
        seq_lens.fill_(length)
        graph.replay()
        assert_bf16_close(out, reference.paged_decode_attention(*args))
    assert not scratch("decode_arrivals", q.device, 0, torch.int32, zeroed=True).any()


@pytest.mark.parametrize(
    ("rows", "n", "k"), [(1, 6144, 4096), (1, 4096, 14336), (4, 28672, 4096), (16, 4096, 4096)]
)
def test_gemv_at_llama_8b_shapes(triton_ops, rows: int, n: int, k: int) -> None:
    # The autotuned path: tile widths and K splits chosen on this GPU, merged in one launch.
    from cairn.kernels.triton_ops.scratch import scratch

    x = _randn(rows, k, seed=20)
    weight = _randn(n, k, seed=21, scale=0.02)
    expected = torch.nn.functional.linear(x.float(), weight.float())
    for _ in range(3):
        assert_bf16_close(triton_ops.gemv(x, weight), expected.to(BF16))
    assert not scratch("gemv_arrivals", x.device, 0, torch.int32, zeroed=True).any()


def test_gemv_replays_in_a_cuda_graph(triton_ops) -> None:
    x = _randn(1, 4096, seed=22)
    weight = _randn(4096, 4096, seed=23, scale=0.02)
    triton_ops.gemv(x, weight)  # tunes outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_ops.gemv(x, weight)
    for seed in range(24, 44):
        x.copy_(_randn(1, 4096, seed=seed))
        graph.replay()
        assert_bf16_close(out, torch.nn.functional.linear(x.float(), weight.float()).to(BF16))


@pytest.mark.parametrize("rows", [1, 8])
def test_fused_gemv_prologues_at_llama_8b_shapes(triton_ops, rows: int) -> None:
    x, residual = _randn(rows, 4096, seed=50), _randn(rows, 4096, seed=51)
    norm_weight = _randn(4096, seed=52)
    qkv_weight = _randn(6144, 4096, seed=53, scale=0.02)
    out, summed = triton_ops.rms_norm_gemv(x, residual, norm_weight, 1e-5, qkv_weight)
    expected, expected_sum = reference.rms_norm_gemv(x, residual, norm_weight, 1e-5, qkv_weight)
    assert torch.equal(summed, expected_sum)
    assert_bf16_close(out, expected)
    gate_up = _randn(rows, 2 * 14336, seed=54)
    down_weight = _randn(4096, 14336, seed=55, scale=0.02)
    assert_bf16_close(
        triton_ops.silu_and_mul_gemv(gate_up, down_weight), reference.silu_and_mul_gemv(gate_up, down_weight)
    )
