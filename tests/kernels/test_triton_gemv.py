"""The Triton GEMV (decode-size linear layers) against torch's matmul, and its dispatch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cairn.kernels
from cairn.kernels import dispatch

TOL = {"rtol": 1e-5, "atol": 1e-4}


def _randn(*shape: int, seed: int, device: torch.device) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize(("n", "k"), [(40, 64), (96, 300)])
@pytest.mark.parametrize(("block_n", "split_k"), [(32, 1), (64, 2), (32, 4)])
def test_gemv_matches_matmul(triton_ops, device, rows: int, n: int, k: int, block_n: int, split_k: int):
    # K = 300 leaves a partial 128-wide tile, and with 4 splits of 128 one split is empty.
    from cairn.kernels.triton_ops.scratch import scratch

    x = _randn(rows, k, seed=1, device=device)
    weight = _randn(n, k, seed=2, device=device)
    out = triton_ops.gemv(x, weight, block_n=block_n, split_k=split_k)
    assert out.shape == (rows, n) and out.dtype == x.dtype
    torch.testing.assert_close(out, x @ weight.T, **TOL)
    # Every split's merge reset its tile's arrival count for the next launch.
    assert not scratch("gemv_arrivals", x.device, 0, torch.int32, zeroed=True).any()


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize(("rows", "split_k"), [(1, 1), (3, 4)])
def test_rms_norm_gemv_matches_norm_then_matmul(triton_ops, device, with_residual, rows, split_k) -> None:
    from cairn.kernels import reference

    x = _randn(rows, 300, seed=10, device=device)
    residual = _randn(rows, 300, seed=11, device=device) if with_residual else None
    norm_weight = _randn(300, seed=12, device=device)
    weight = _randn(40, 300, seed=13, device=device)
    out, summed = triton_ops.rms_norm_gemv(
        x, residual, norm_weight, 1e-5, weight, block_n=32, split_k=split_k
    )
    if residual is None:
        normed, expected_sum = reference.rms_norm(x, norm_weight, 1e-5), x
    else:
        normed, expected_sum = reference.rms_norm(x, norm_weight, 1e-5, residual)
    torch.testing.assert_close(out, normed @ weight.T, **TOL)
    torch.testing.assert_close(summed, expected_sum, **TOL)


@pytest.mark.parametrize(("rows", "split_k"), [(1, 1), (5, 2)])
def test_silu_and_mul_gemv_matches_gating_then_matmul(triton_ops, device, rows: int, split_k: int) -> None:
    from cairn.kernels import reference

    gate_up = _randn(rows, 2 * 200, seed=14, device=device)
    weight = _randn(56, 200, seed=15, device=device)
    out = triton_ops.silu_and_mul_gemv(gate_up, weight, block_n=32, split_k=split_k)
    torch.testing.assert_close(out, reference.silu_and_mul(gate_up) @ weight.T, **TOL)


def test_gemv_strided_rows_and_row_limit(triton_ops, device) -> None:
    x = _randn(2, 80, seed=3, device=device)[:, :64]
    weight = _randn(48, 64, seed=4, device=device)
    torch.testing.assert_close(triton_ops.gemv(x, weight), x @ weight.T, **TOL)
    with pytest.raises(ValueError, match="at most 16 rows"):
        triton_ops.gemv(_randn(17, 64, seed=5, device=device), weight)


def test_split_choices_cover_the_multiprocessors() -> None:
    from cairn.kernels.triton_ops.skinny_gemm import split_choices

    # 8B o_proj at batch 1 on an H200: 64 column tiles of 64 need 4 splits to reach 132 SMs.
    assert split_choices(n_tiles=64, k_tiles=16, processors=132) == [4, 8]
    # Wide layers need no split, and never more splits than K has tiles.
    assert split_choices(n_tiles=448, k_tiles=16, processors=132) == [1, 2]
    assert split_choices(n_tiles=18, k_tiles=4, processors=132) == [4]


@pytest.fixture
def accelerator(monkeypatch, device, triton_ops) -> torch.device:
    if device.type == "cpu":
        monkeypatch.setattr(dispatch, "_TRITON_DEVICE_TYPES", ("cpu",))
    return device


def test_linear_takes_the_gemv_only_when_switched_on(accelerator, monkeypatch, triton_ops) -> None:
    calls = []
    monkeypatch.setattr(triton_ops, "gemv", lambda x, w: calls.append(x.shape) or x @ w.T)
    x = _randn(4, 32, seed=6, device=accelerator)
    weight = _randn(24, 32, seed=7, device=accelerator)
    bias = _randn(24, seed=8, device=accelerator)
    cairn.kernels.linear(x, weight)
    assert calls == []
    with cairn.kernels.triton_gemv():
        torch.testing.assert_close(cairn.kernels.linear(x, weight), F.linear(x, weight), **TOL)
        assert calls == [(4, 32)]
        # A bias, more than 16 rows, or the reference forced: cuBLAS (F.linear) as before.
        cairn.kernels.linear(x, weight, bias)
        cairn.kernels.linear(_randn(17, 32, seed=9, device=accelerator), weight)
        with cairn.kernels.force_reference():
            cairn.kernels.linear(x, weight)
    assert calls == [(4, 32)]


def test_scratch_buffers_grow_without_freeing_what_graphs_captured() -> None:
    from cairn.kernels.triton_ops import scratch as module

    first = module.scratch("test_growth", torch.device("cpu"), 10, torch.int32, zeroed=True)
    assert first.numel() >= 10 and not first.any()
    assert module.scratch("test_growth", torch.device("cpu"), 5, torch.int32, zeroed=True) is first
    address = first.data_ptr()
    del first
    grown = module.scratch("test_growth", torch.device("cpu"), 4096, torch.int32, zeroed=True)
    assert grown.numel() >= 4096
    # The old allocation is still held: a graph captured with it keeps a valid address.
    assert address in {buffer.data_ptr() for buffer in module._RETIRED}
