"""Triton RMSNorm, SiLU-and-mul, rotary and KV-cache write against their references.

On a machine without CUDA these run under TRITON_INTERPRET=1 on CPU tensors
(see conftest.py); with CUDA they run the compiled kernels in fp32.
"""

from __future__ import annotations

import pytest
import torch

from cairn.kernels import build_rope_cache, reference

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _randn(*shape: int, seed: int, device: torch.device) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("hidden", [40, 64])
def test_rms_norm(triton_ops, device, hidden: int) -> None:
    x = _randn(2, 3, hidden, seed=0, device=device)
    weight = _randn(hidden, seed=1, device=device)
    out = triton_ops.rms_norm(x, weight, 1e-6)
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference.rms_norm(x, weight, 1e-6), **TOL)


def test_rms_norm_with_residual(triton_ops, device) -> None:
    x = _randn(5, 40, seed=2, device=device)
    residual = _randn(5, 40, seed=3, device=device)
    weight = _randn(40, seed=4, device=device)
    out, summed = triton_ops.rms_norm(x, weight, 1e-5, residual)
    expected_out, expected_sum = reference.rms_norm(x, weight, 1e-5, residual)
    torch.testing.assert_close(summed, expected_sum, **TOL)
    torch.testing.assert_close(out, expected_out, **TOL)


def test_rms_norm_strided_rows(triton_ops, device) -> None:
    # A column slice keeps unit stride within rows but a wider row stride.
    x = _randn(4, 96, seed=5, device=device)[:, :48]
    weight = _randn(48, seed=6, device=device)
    torch.testing.assert_close(
        triton_ops.rms_norm(x, weight, 1e-6), reference.rms_norm(x, weight, 1e-6), **TOL
    )


@pytest.mark.parametrize("intermediate", [20, 1100])
def test_silu_and_mul(triton_ops, device, intermediate: int) -> None:
    # 1100 spans two column tiles of 1024 with a partial second one.
    x = _randn(2, 3, 2 * intermediate, seed=7, device=device)
    out = triton_ops.silu_and_mul(x)
    assert out.shape == (2, 3, intermediate)
    torch.testing.assert_close(out, reference.silu_and_mul(x), **TOL)


@pytest.mark.parametrize(("n_heads", "n_kv_heads", "head_dim"), [(4, 2, 16), (6, 1, 24)])
def test_apply_rotary_on_fused_qkv_views(triton_ops, device, n_heads: int, n_kv_heads: int, head_dim: int):
    n_tokens, max_position = 9, 128
    qkv = _randn(n_tokens, (n_heads + 2 * n_kv_heads) * head_dim, seed=8, device=device)
    q = qkv[:, : n_heads * head_dim].view(n_tokens, n_heads, head_dim)
    k = qkv[:, n_heads * head_dim : (n_heads + n_kv_heads) * head_dim].view(n_tokens, n_kv_heads, head_dim)
    positions = torch.randint(0, max_position, (n_tokens,), generator=torch.Generator().manual_seed(9))
    positions = positions.to(device)
    rope_scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    cache = build_rope_cache(head_dim, max_position, 500000.0, rope_scaling, device)
    expected_q, expected_k = reference.apply_rotary(q, k, positions, cache)
    untouched_v = qkv[:, (n_heads + n_kv_heads) * head_dim :].clone()
    out_q, out_k = triton_ops.apply_rotary(q, k, positions, cache)
    torch.testing.assert_close(out_q, expected_q, **TOL)
    torch.testing.assert_close(out_k, expected_k, **TOL)
    # Rotated in place inside the fused buffer; v's columns are left alone.
    assert out_q.data_ptr() == q.data_ptr()
    assert torch.equal(qkv[:, (n_heads + n_kv_heads) * head_dim :], untouched_v)


def test_write_kv_cache_skips_negative_slots(triton_ops, device) -> None:
    n_blocks, block_size, n_kv_heads, head_dim = 6, 5, 2, 16
    kv = _randn(7, 2 * n_kv_heads * head_dim, seed=10, device=device)
    # K and V as strided views of one projection output, as the model produces them.
    k = kv[:, : n_kv_heads * head_dim].view(7, n_kv_heads, head_dim)
    v = kv[:, n_kv_heads * head_dim :].view(7, n_kv_heads, head_dim)
    slots = torch.tensor([3, -1, 29, 5, 0, -1, 17], device=device)
    caches = [torch.zeros(n_blocks, block_size, n_kv_heads, head_dim, device=device) for _ in range(4)]
    reference.write_kv_cache(k, v, caches[0], caches[1], slots)
    triton_ops.write_kv_cache(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[2], caches[0])
    assert torch.equal(caches[3], caches[1])
    assert int((caches[2].abs().sum(dim=(2, 3)) > 0).sum()) == 5


def test_write_kv_cache_casts_to_cache_dtype(triton_ops, device) -> None:
    k = _randn(3, 1, 16, seed=11, device=device)
    v = _randn(3, 1, 16, seed=12, device=device)
    k_cache = torch.zeros(2, 4, 1, 16, dtype=torch.float16, device=device)
    v_cache = torch.zeros_like(k_cache)
    triton_ops.write_kv_cache(k, v, k_cache, v_cache, torch.tensor([6, 1, 2], device=device))
    assert torch.equal(k_cache[1, 2], k[0].half())
    assert torch.equal(v_cache[0, 2], v[2].half())


def _rotary_cache_case(n_heads: int, n_kv_heads: int, head_dim: int, device: torch.device, seed: int):
    n_tokens, n_blocks, block_size, max_position = 9, 5, 4, 64
    width = (n_heads + 2 * n_kv_heads) * head_dim
    # A column slice, as a wider projection output would be: rows are not contiguous with each other.
    qkv = _randn(n_tokens, width + 8, seed=seed, device=device)[:, :width]
    bias = _randn(width, seed=seed + 1, device=device)
    gen = torch.Generator().manual_seed(seed + 2)
    positions = torch.randint(0, max_position, (n_tokens,), generator=gen, dtype=torch.int32).to(device)
    slots = torch.randperm(n_blocks * block_size, generator=gen)[:n_tokens].to(torch.int32)
    slots[[1, 6]] = -1
    cache = build_rope_cache(head_dim, max_position, 10000.0, None, device)
    shape = (n_blocks, block_size, n_kv_heads, head_dim)
    caches = [torch.full(shape, float("nan"), device=device) for _ in range(4)]
    return qkv, bias, positions, cache, slots.to(device), caches


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(("n_heads", "n_kv_heads", "head_dim"), [(4, 2, 16), (6, 1, 24)])
def test_rotary_and_cache(triton_ops, device, with_bias: bool, n_heads: int, n_kv_heads: int, head_dim: int):
    qkv, bias, positions, cache, slots, caches = _rotary_cache_case(n_heads, n_kv_heads, head_dim, device, 20)
    bias = bias if with_bias else None
    before = qkv.clone()
    expected = reference.rotary_and_cache(qkv, positions, cache, caches[0], caches[1], slots, bias)
    out = triton_ops.rotary_and_cache(qkv, positions, cache, caches[2], caches[3], slots, bias)
    assert out.shape == (qkv.shape[0], n_heads, head_dim) and out.is_contiguous()
    torch.testing.assert_close(out, expected, **TOL)
    # NaN marks every slot no token wrote: the same slots, with the same values.
    torch.testing.assert_close(caches[2], caches[0], equal_nan=True, **TOL)
    torch.testing.assert_close(caches[3], caches[1], equal_nan=True, **TOL)
    assert int((~caches[2].isnan()).all(dim=-1).all(dim=-1).sum()) == len(slots) - 2
    assert torch.equal(qkv, before)


def test_rotary_and_cache_casts_to_cache_dtype(triton_ops, device) -> None:
    qkv, _, positions, cache, slots, caches = _rotary_cache_case(4, 2, 16, device, 30)
    half = [torch.zeros_like(c, dtype=torch.float16) for c in caches[:2]]
    reference.rotary_and_cache(qkv, positions, cache, caches[0], caches[1], slots)
    triton_ops.rotary_and_cache(qkv, positions, cache, half[0], half[1], slots)
    written = ~caches[0].isnan()
    assert torch.equal(half[0][written], caches[0][written].half())
    assert torch.equal(half[1][written], caches[1][written].half())
