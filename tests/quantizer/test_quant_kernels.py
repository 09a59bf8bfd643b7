"""Quantized kernels: the layout, Triton against the torch references, references against plain math.

Without CUDA the Triton kernels run under TRITON_INTERPRET=1 (tests/conftest.py);
on a GPU the same comparisons run on the device.
"""

from __future__ import annotations

import pytest
import torch

from cairn.kernels import quant_layout, reference
from cairn.kernels.reference import quant_attention, quant_codes, quant_gemm, quant_kv_cache

FP8 = torch.float8_e4m3fn
GEN = torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def triton_quant():
    pytest.importorskip("triton")
    from cairn.kernels.triton_ops import (
        quant_activation,
        quant_attention,
        quant_gemm,
        quant_kv_cache,
        quant_scaled_gemm,
    )

    return {
        "activation": quant_activation,
        "attention": quant_attention,
        "gemm": quant_gemm,
        "kv": quant_kv_cache,
        "scaled": quant_scaled_gemm,
    }


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def assert_same_codes(ours: torch.Tensor, expected: torch.Tensor) -> None:
    assert ours.dtype == expected.dtype
    assert torch.equal(ours.view(torch.int8), expected.view(torch.int8))


# ---- layout


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_round_trip(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (6, 64), generator=GEN, dtype=torch.int32)
    packed = quant_layout.pack_weight(codes, bits)
    assert packed.shape == (64 * bits // 32, 6) and packed.dtype == torch.int32
    assert torch.equal(quant_layout.unpack_weight(packed, bits), codes)


@pytest.mark.parametrize("bits", [4, 8])
def test_layout_is_compressed_tensors_packing_transposed(bits: int) -> None:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    signed = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (5, 64), generator=GEN, dtype=torch.int8)
    ours = quant_layout.pack_weight(signed.int() + 2 ** (bits - 1), bits)
    assert torch.equal(ours, pack_to_int32(signed, bits).t())


def test_pack_rejects_unsupported_bits_and_ragged_rows() -> None:
    with pytest.raises(ValueError, match="4- or 8-bit"):
        quant_layout.pack_factor(3)
    with pytest.raises(ValueError, match="whole 32-bit words"):
        quant_layout.pack_codes(torch.zeros(2, 12, dtype=torch.int32), 4)


# ---- codes and activations


def test_int8_codes_round_half_to_even_and_saturate() -> None:
    values = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 300.0, -300.0, 126.6])
    codes = quant_codes.to_codes(values, torch.int8)
    assert codes.tolist() == [0, 2, 2, 0, -2, 127, -128, 127]
    fp8 = quant_codes.to_codes(torch.tensor([1000.0, -1000.0]), FP8)
    assert fp8.float().tolist() == [448.0, -448.0]


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
def test_reference_activation_quantization_reconstructs_rows(dtype: torch.dtype) -> None:
    x = _randn(7, 48, seed=1) * torch.linspace(0.01, 30, 7)[:, None]
    codes, scale = quant_codes.quantize_activations(x, dtype)
    assert scale.shape == (7, 1)
    error = (codes.float() * scale - x).abs().amax(dim=1)
    step = scale[:, 0] * (0.5 if dtype == torch.int8 else 16.0)
    assert torch.all(error <= step + 1e-6)
    zero_codes, zero_scale = quant_codes.quantize_activations(torch.zeros(1, 8), dtype)
    assert torch.equal(zero_codes.float(), torch.zeros(1, 8)) and zero_scale.item() > 0


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
@pytest.mark.parametrize("static", [False, True])
def test_triton_activation_quantization_matches_reference(triton_quant, device, dtype, static) -> None:
    x = (_randn(9, 1300, seed=2) * 3).to(device)
    x[4] = 0.0
    scale = torch.tensor([0.05], device=device) if static else None
    codes, scales = triton_quant["activation"].quantize_activations(x, dtype, scale)
    ref_codes, ref_scales = quant_codes.quantize_activations(x, dtype, scale)
    assert_same_codes(codes, ref_codes)
    torch.testing.assert_close(scales, ref_scales, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
def test_triton_codes_round_like_torch_at_the_edges(triton_quant, device, dtype) -> None:
    """Ties go to even, a value just under a half rounds down (floor(x + 0.5) gets 0.49999997
    wrong), out-of-range values saturate; FP8 ties and subnormals round as torch's cast."""
    edges = [0.49999997, 0.5, 1.5, 2.5, -0.5, -2.5, 126.5, 127.6, -128.6, 1e6, -1e6, 0.0]
    fp8_edges = [2.0**-9 * 1.5, 2.0**-9 * 2.5, 17.0, 19.0, 232.0, 447.9, 449.0, -0.0029]
    x = torch.tensor([edges + fp8_edges], device=device)
    one = torch.tensor([1.0], device=device)
    codes, _ = triton_quant["activation"].quantize_activations(x, dtype, one)
    assert_same_codes(codes, quant_codes.quantize_activations(x, dtype, one)[0])


# ---- weight-only GEMM


def _packed_weight(n: int, k: int, bits: int, group_size: int, asym: bool, device, seed: int):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n, k), generator=gen, dtype=torch.int32)
    groups = k // group_size
    scales = (torch.rand(groups, n, generator=gen) * 0.02 + 0.001).to(device)
    zeros = torch.randint(0, 2**bits, (groups, n), generator=gen).float().to(device) if asym else None
    return quant_layout.pack_weight(codes, bits).to(device), scales, zeros, codes


def test_reference_dequantization_is_code_minus_zero_times_scale() -> None:
    qweight, scales, zeros, codes = _packed_weight(3, 64, 4, 32, True, "cpu", seed=3)
    weight = quant_gemm.dequantize_weight(qweight, scales, zeros, 4, 32)
    n, k = 2, 40
    expected = (codes[n, k] - zeros[k // 32, n]) * scales[k // 32, n]
    assert weight[n, k].item() == pytest.approx(expected.item())
    symmetric = quant_gemm.dequantize_weight(qweight, scales, None, 4, 32)
    assert symmetric[n, k].item() == pytest.approx(((codes[n, k] - 8) * scales[k // 32, n]).item())


@pytest.mark.parametrize(("bits", "group_size", "asym"), [(4, 32, False), (4, 64, True), (8, 128, False)])
@pytest.mark.parametrize("m", [1, 5, 33, 70])
def test_triton_weight_only_gemm_matches_reference(triton_quant, device, bits, group_size, asym, m) -> None:
    n, k = 96, 128
    qweight, scales, zeros, _ = _packed_weight(n, k, bits, group_size, asym, device, seed=m)
    x = _randn(m, k, seed=m + 1).to(device)
    bias = _randn(n, seed=m + 2).to(device)
    expected = quant_gemm.weight_only_gemm(x, qweight, scales, zeros, bits, group_size, bias)
    for split_k in (1, 2):
        out = triton_quant["gemm"].weight_only_gemm(
            x, qweight, scales, zeros, bits, group_size, bias, split_k=split_k
        )
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_triton_weight_only_gemm_per_channel_without_bias(triton_quant, device) -> None:
    n, k = 40, 96
    qweight, scales, _, _ = _packed_weight(n, k, 8, k, False, device, seed=7)
    x = _randn(3, k, seed=8).to(device)
    out = triton_quant["gemm"].weight_only_gemm(x, qweight, scales, None, 8, k)
    torch.testing.assert_close(out, quant_gemm.weight_only_gemm(x, qweight, scales, None, 8, k))


def test_weight_only_gemm_dispatch_falls_back_for_small_groups() -> None:
    from cairn.kernels.triton_ops.quant_gemm import supports

    assert supports(128, 32) and supports(4096, 128)
    assert not supports(96, 8) and not supports(100, 100)


# ---- W8A8 GEMM


def _w8a8_operands(m: int, n: int, k: int, device, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x_codes = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8).to(device)
    w_codes = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8).to(device)
    x_scale = (torch.rand(m, 1, generator=gen) * 0.01).to(device)
    w_scale = (torch.rand(n, generator=gen) * 0.01).to(device)
    return x_codes, x_scale, w_codes, w_scale


def test_reference_scaled_gemm_is_exact_integer_product() -> None:
    x_codes, x_scale, w_codes, w_scale = _w8a8_operands(4, 6, 64, "cpu", seed=9)
    out = quant_gemm.scaled_gemm(x_codes, x_scale, w_codes, w_scale, None, torch.float64)
    exact = (x_codes.double() @ w_codes.double().t()) * x_scale.double() * w_scale.double()
    torch.testing.assert_close(out, exact.float().double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("m", [1, 17, 80])
@pytest.mark.parametrize("static", [False, True])
def test_triton_int8_gemm_matches_reference(triton_quant, device, m, static) -> None:
    n, k = 72, 160
    x_codes, x_scale, w_codes, w_scale = _w8a8_operands(m, n, k, device, seed=m)
    if static:
        x_scale, w_scale = x_scale[:1, 0], w_scale[:1]
    bias = _randn(n, seed=m).to(device)
    out = triton_quant["scaled"].scaled_int8_gemm(x_codes, x_scale, w_codes, w_scale, bias, torch.float32)
    expected = quant_gemm.scaled_gemm(x_codes, x_scale, w_codes, w_scale, bias, torch.float32)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
    reason="FP8 tensor cores need a CUDA device of compute capability 8.9+",
)
def test_cublas_fp8_gemm_matches_reference() -> None:
    from cairn.kernels.quant_dispatch import scaled_gemm

    x = torch.randn(33, 256, device="cuda")
    w = torch.randn(128, 256, device="cuda")
    x_codes, x_scale = quant_codes.quantize_activations(x, FP8)
    w_codes, w_scale = quant_codes.quantize_activations(w, FP8)
    out = scaled_gemm(x_codes, x_scale, w_codes, w_scale[:, 0], None, torch.bfloat16)
    expected = quant_gemm.scaled_gemm(x_codes, x_scale, w_codes, w_scale[:, 0], None, torch.float32)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


# ---- KV cache


def _slots(n_tokens: int, n_blocks: int, block_size: int, seed: int) -> torch.Tensor:
    slots = torch.randperm(n_blocks * block_size, generator=torch.Generator().manual_seed(seed))[:n_tokens]
    slots[1] = -1
    return slots


def _empty_cache(n_blocks: int, block_size: int, heads: int, dim: int, dtype, dynamic: bool, device):
    cache = torch.zeros(2, n_blocks, block_size, heads, dim, dtype=dtype, device=device)
    if dynamic:
        scales = torch.zeros(2, n_blocks, block_size, heads, device=device)
        return cache, scales[0], scales[1]
    return cache, torch.tensor([0.02], device=device), torch.tensor([0.03], device=device)


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
@pytest.mark.parametrize("dynamic", [False, True])
def test_reference_kv_write_quantizes_into_slots(dtype, dynamic) -> None:
    k, v = _randn(6, 2, 16, seed=10), _randn(6, 2, 16, seed=11)
    cache, k_scale, v_scale = _empty_cache(4, 4, 2, 16, dtype, dynamic, "cpu")
    slots = _slots(6, 4, 4, seed=12)
    quant_kv_cache.write_kv_cache_quant(k, v, cache[0], cache[1], k_scale, v_scale, slots)
    blocks = torch.arange(4)
    k_back = quant_kv_cache.dequantize_blocks(cache[0], k_scale, blocks).view(-1, 2, 16)
    for token, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        tolerance = 0.03 if dtype == torch.int8 else 0.15
        torch.testing.assert_close(k_back[slot], k[token], atol=tolerance * k[token].abs().max(), rtol=0.07)
    written = set(slots[slots >= 0].tolist())
    untouched = [s for s in range(16) if s not in written]
    assert torch.equal(cache[0].view(-1, 2, 16)[untouched].float(), torch.zeros(len(untouched), 2, 16))


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
@pytest.mark.parametrize("dynamic", [False, True])
def test_triton_kv_write_matches_reference(triton_quant, device, dtype, dynamic) -> None:
    k, v = _randn(9, 3, 24, seed=13).to(device), _randn(9, 3, 24, seed=14).to(device)
    slots = _slots(9, 5, 4, seed=15).to(device)
    ours = _empty_cache(5, 4, 3, 24, dtype, dynamic, device)
    ref = _empty_cache(5, 4, 3, 24, dtype, dynamic, device)
    triton_quant["kv"].write_kv_cache_quant(k, v, ours[0][0], ours[0][1], ours[1], ours[2], slots)
    quant_kv_cache.write_kv_cache_quant(k, v, ref[0][0], ref[0][1], ref[1], ref[2], slots)
    assert_same_codes(ours[0], ref[0])
    torch.testing.assert_close(ours[1], ref[1], rtol=0, atol=0)
    torch.testing.assert_close(ours[2], ref[2], rtol=0, atol=0)


def _quantized_context(context_lens, n_kv_heads, head_dim, block_size, dtype, dynamic, device, seed):
    """Sequences written through the reference quantizer into shuffled blocks. Unowned slots hold the
    largest code and (dynamic) NaN scales, table padding is -1: a kernel reading either shows it."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    n_blocks = sum(blocks_per_seq) + 2
    cache, k_scale, v_scale = _empty_cache(n_blocks, block_size, n_kv_heads, head_dim, dtype, dynamic, "cpu")
    cache.view(torch.int8).fill_(0x7E)
    if dynamic:
        k_scale.fill_(float("nan"))
        v_scale.fill_(float("nan"))
    order = torch.randperm(n_blocks, generator=gen)
    tables = torch.full((len(context_lens), max(blocks_per_seq) + 1), -1, dtype=torch.int32)
    first = 0
    for seq, (length, count) in enumerate(zip(context_lens, blocks_per_seq, strict=True)):
        ids = order[first : first + count]
        first += count
        tables[seq, :count] = ids.int()
        pos = torch.arange(length)
        slots = ids[pos // block_size] * block_size + pos % block_size
        k = torch.randn(length, n_kv_heads, head_dim, generator=gen)
        v = torch.randn(length, n_kv_heads, head_dim, generator=gen)
        quant_kv_cache.write_kv_cache_quant(k, v, cache[0], cache[1], k_scale, v_scale, slots)
    lens = torch.tensor(context_lens, dtype=torch.int32)
    return [t.to(device) for t in (cache[0], cache[1], k_scale, v_scale, tables, lens)]


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_triton_quant_decode_matches_reference(triton_quant, device, dtype, dynamic, num_splits) -> None:
    k_cache, v_cache, k_scale, v_scale, tables, lens = _quantized_context(
        [37, 0, 130, 1], 2, 16, 16 if num_splits == 1 else 5, dtype, dynamic, device, seed=16
    )
    q = _randn(4, 4, 16, seed=17).to(device)
    args = (q, k_cache, v_cache, k_scale, v_scale, tables, lens, 0.25)
    out = triton_quant["attention"].paged_decode_attention_quant(*args, num_splits=num_splits)
    torch.testing.assert_close(out, quant_attention.paged_decode_attention_quant(*args), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[1], torch.zeros_like(out[1]))


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
@pytest.mark.parametrize("dynamic", [False, True])
def test_triton_quant_prefill_matches_reference(triton_quant, device, dtype, dynamic) -> None:
    context_lens = [9, 70, 1]
    k_cache, v_cache, k_scale, v_scale, tables, lens = _quantized_context(
        context_lens, 1, 16, 8, dtype, dynamic, device, seed=18
    )
    q_lens = [4, 70, 1]  # a chunk after a cached prefix, a whole multi-tile prompt, one token
    query_start_loc = torch.tensor([0, 4, 74, 75], dtype=torch.int32, device=device)
    q = _randn(sum(q_lens), 3, 16, seed=19).to(device)
    args = (q, k_cache, v_cache, k_scale, v_scale, tables, query_start_loc, lens, 0.25)
    out = triton_quant["attention"].prefill_attention_quant(*args)
    torch.testing.assert_close(out, quant_attention.prefill_attention_quant(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
def test_quantized_decode_stays_close_to_full_precision(dtype) -> None:
    lens = [30, 13]
    full = torch.zeros(2, 12, 4, 2, 16)
    scales = torch.zeros(2, 12, 4, 2)
    cache = torch.zeros(2, 12, 4, 2, 16, dtype=dtype)
    tables = torch.randperm(12, generator=torch.Generator().manual_seed(41)).int()
    tables = torch.stack((tables[:8], torch.cat((tables[8:], tables[:4]))))
    for seq, length in enumerate(lens):
        pos = torch.arange(length)
        slots = tables[seq, pos // 4].long() * 4 + pos % 4
        k, v = _randn(length, 2, 16, seed=20 + seq), _randn(length, 2, 16, seed=30 + seq)
        reference.write_kv_cache(k, v, full[0], full[1], slots)
        quant_kv_cache.write_kv_cache_quant(k, v, cache[0], cache[1], scales[0], scales[1], slots)
    q = _randn(2, 4, 16, seed=40)
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    exact = reference.paged_decode_attention(q, full[0], full[1], tables, seq_lens, 0.25)
    approx = quant_attention.paged_decode_attention_quant(
        q, cache[0], cache[1], scales[0], scales[1], tables, seq_lens, 0.25
    )
    tolerance = 0.02 if dtype == torch.int8 else 0.1
    torch.testing.assert_close(approx, exact, atol=tolerance, rtol=0)
