"""Quantized kernels and serving on a CUDA GPU: bf16 at the Llama-3.1-8B shapes, CUDA graphs, FP8 on Hopper.

Skipped without CUDA (the same Triton kernels run under the interpreter in
test_quant_kernels.py); on the H200 run `pytest tests/quantizer -m gpu`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from quant_harness import make_runner, prompts, spec, teacher_forced_logits

from cairn.kernels import quant_dispatch, quant_layout
from cairn.kernels.reference import quant_attention, quant_codes, quant_gemm, quant_kv_cache

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")
# (K, N) of the 8B layers: qkv, o, gate_up, down.
SHAPES_8B = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]


def _relative_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return float((ours.float() - expected.float()).norm() / expected.float().norm())


@pytest.mark.parametrize(("k", "n"), SHAPES_8B)
@pytest.mark.parametrize("m", [1, 16, 256, 2048])
@pytest.mark.parametrize(("bits", "group_size", "asym"), [(4, 128, False), (4, 128, True), (8, None, False)])
def test_weight_only_gemm_bf16_at_8b_shapes(k, n, m, bits, group_size, asym) -> None:
    group = group_size or k
    generator = torch.Generator(CUDA).manual_seed(m + k)
    codes = torch.randint(0, 2**bits, (n, k), generator=generator, device=CUDA, dtype=torch.int32)
    qweight = quant_layout.pack_weight(codes, bits)
    scales = (torch.rand(k // group, n, generator=generator, device=CUDA) * 0.01).bfloat16()
    zeros = (
        torch.randint(0, 2**bits, (k // group, n), generator=generator, device=CUDA).bfloat16()
        if asym
        else None
    )
    x = torch.randn(m, k, generator=generator, device=CUDA).bfloat16()
    out = quant_dispatch.weight_only_gemm(x, qweight, scales, zeros, bits, group)
    expected = quant_gemm.weight_only_gemm(x.float(), qweight, scales, zeros, bits, group)
    assert out.dtype == torch.bfloat16 and _relative_error(out, expected) < 1e-2


@pytest.mark.parametrize(("k", "n"), SHAPES_8B)
@pytest.mark.parametrize("m", [1, 64, 2048])
def test_w8a8_int8_bf16_at_8b_shapes(k, n, m) -> None:
    x = torch.randn(m, k, device=CUDA).bfloat16()
    w_codes, w_scale = quant_codes.quantize_activations(torch.randn(n, k, device=CUDA), torch.int8)
    x_codes, x_scale = quant_dispatch.quantize_activations(x, torch.int8)
    ref_codes, ref_scale = quant_codes.quantize_activations(x, torch.int8)
    assert torch.equal(x_codes, ref_codes) and torch.equal(x_scale, ref_scale)
    out = quant_dispatch.scaled_gemm(x_codes, x_scale, w_codes, w_scale[:, 0], None, torch.bfloat16)
    expected = quant_gemm.scaled_gemm(x_codes, x_scale, w_codes, w_scale[:, 0], None, torch.float32)
    assert _relative_error(out, expected) < 1e-2


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
    reason="needs FP8 tensor cores",
)
@pytest.mark.parametrize("m", [1, 64, 2048])
def test_fp8_gemm_bf16_at_8b_shape(m) -> None:
    x = torch.randn(m, 4096, device=CUDA).bfloat16()
    w_codes, w_scale = quant_codes.quantize_activations(
        torch.randn(14336, 4096, device=CUDA), torch.float8_e4m3fn
    )
    x_codes, x_scale = quant_dispatch.quantize_activations(x, torch.float8_e4m3fn)
    out = quant_dispatch.scaled_gemm(x_codes, x_scale, w_codes, w_scale[:, 0], None, torch.bfloat16)
    expected = quant_gemm.scaled_gemm(x_codes, x_scale, w_codes, w_scale[:, 0], None, torch.float32)
    assert _relative_error(out, expected) < 1e-2


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("dynamic", [False, True])
def test_quantized_kv_attention_bf16_at_8b_shape(dtype, dynamic) -> None:
    heads, kv_heads, dim, block = 32, 8, 128, 16
    lens = [4096, 1, 700, 2049]
    blocks_per_seq = [-(-n // block) for n in lens]
    n_blocks = sum(blocks_per_seq) + 4
    cache = torch.zeros(2, n_blocks, block, kv_heads, dim, dtype=dtype, device=CUDA)
    if dynamic:
        scales = torch.zeros(2, n_blocks, block, kv_heads, device=CUDA)
        k_scale, v_scale = scales[0], scales[1]
    else:
        k_scale, v_scale = torch.tensor([0.03], device=CUDA), torch.tensor([0.03], device=CUDA)
    order = torch.randperm(n_blocks, device=CUDA)
    tables = torch.zeros(len(lens), max(blocks_per_seq), dtype=torch.int32, device=CUDA)
    first = 0
    for seq, (length, count) in enumerate(zip(lens, blocks_per_seq, strict=True)):
        ids = order[first : first + count]
        first += count
        tables[seq, :count] = ids.int()
        pos = torch.arange(length, device=CUDA)
        slots = (ids[pos // block] * block + pos % block).int()
        k, v = torch.randn(2, length, kv_heads, dim, device=CUDA).bfloat16()
        quant_dispatch.write_kv_cache_quant(k, v, cache[0], cache[1], k_scale, v_scale, slots)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=CUDA)
    q = torch.randn(len(lens), heads, dim, device=CUDA).bfloat16()
    args = (q, cache[0], cache[1], k_scale, v_scale, tables, seq_lens, dim**-0.5)
    out = quant_dispatch.paged_decode_attention_quant(*args)
    assert _relative_error(out, quant_attention.paged_decode_attention_quant(*args)) < 2e-2
    q_lens = [64, 1, 300, 2049]
    starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=CUDA)
    q = torch.randn(sum(q_lens), heads, dim, device=CUDA).bfloat16()
    args = (q, cache[0], cache[1], k_scale, v_scale, tables, starts, seq_lens, dim**-0.5)
    out = quant_dispatch.prefill_attention_quant(*args)
    assert _relative_error(out, quant_attention.prefill_attention_quant(*args)) < 2e-2
    assert quant_kv_cache.dequantize_blocks(cache[0], k_scale, tables[0, :1].long()).isfinite().all()


SERVED = {
    "w4a16": ("weight_only_int4", {"group_size": 32}),
    "w8a8-int8": ("smooth_quant", {}),
    "fp8-kv-fp8": ("fp8", {"kv_cache": {"dtype": "fp8"}}),
    "kv-int8-static": ("kv_cache_only", {"kv_cache": {"dtype": "int8", "static_scales": True}}),
}


_NO_FP8 = not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.skipif(_NO_FP8, reason="FP8 needs compute capability 8.9+"))
        if n.startswith("fp8")
        else n
        for n in SERVED
    ],
)
def test_serving_on_cuda_with_graphs_matches_the_cpu_reference(artifact, name) -> None:
    from cairn.services.worker.driver import Driver
    from cairn.services.worker.sampling_params import SamplingParams

    quant_type, fields = SERVED[name]
    out = artifact(quant_type, **fields).directory
    vocab = json.loads((out / "config.json").read_text())["vocab_size"]
    batch = prompts(vocab, count=3, length=12, seed=5)
    cpu = teacher_forced_logits(make_runner(out), batch, 7)
    eager = make_runner(out, device="cuda", dtype="bfloat16", enforce_eager=True)
    logits = teacher_forced_logits(eager, batch, 7).cpu()
    # bf16 activations on the GPU against fp32 on the CPU flip some activation codes: an int8
    # code step is under 1% of a row's range, an e4m3 one up to 6.25% of the value.
    tolerance = 0.15 if name.startswith("fp8") else 0.1
    assert (logits - cpu).abs().max() < tolerance * cpu.abs().max()
    graphs = make_runner(out, device="cuda", dtype="bfloat16")
    assert graphs.graphs is not None
    params = SamplingParams(temperature=0.0, max_tokens=8)
    assert Driver(graphs).generate(batch, params) == Driver(eager).generate(batch, params)


def test_quantizing_on_cuda(source: Path, calibration_file: Path, tmp_path: Path) -> None:
    from cairn.services.quantizer.plan import plan_from_spec
    from cairn.services.quantizer.quantize import quantize

    calibration = {"dataset_uri": str(calibration_file), "num_samples": 8, "seq_len": 64}
    evaluation = {"num_samples": 2, "seq_len": 64}
    plan = plan_from_spec(spec(str(source), "awq", group_size=32, calibration=calibration, eval=evaluation))
    outcome = quantize(
        plan, source, tmp_path / "out", fetch=Path, device=CUDA, report=lambda *_: None, lineage={}
    )
    assert outcome.evaluation.eval_tokens == 126
    assert abs(outcome.evaluation.perplexity_after / outcome.evaluation.perplexity_before - 1) < 0.05
