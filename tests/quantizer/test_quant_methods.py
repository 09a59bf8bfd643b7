"""The algorithms on plain tensors and on the tiny model's own layers and calibration activations.

Acceptance: on the same calibration activations, GPTQ and AWQ INT4 reconstruct
every linear layer's output with lower error than RTN INT4, and SmoothQuant
W8A8 beats naive W8A8 on a layer with injected activation outliers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cairn.kernels.reference.quant_codes import quantize_activations
from cairn.services.quantizer.methods import awq, gptq, smoothquant
from cairn.services.quantizer.methods.kv_range import KVRange, rotate
from cairn.services.quantizer.methods.rtn import QuantArgs, fake_quantize, rtn

INT4 = QuantArgs(bits=4, group_size=32)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _output_error(x: torch.Tensor, weight: torch.Tensor, approx: torch.Tensor) -> float:
    return float((x @ weight.t() - x @ approx.t()).pow(2).mean())


# ---- RTN


@pytest.mark.parametrize(
    "args",
    [QuantArgs(8), QuantArgs(4, 32), QuantArgs(4, 32, symmetric=False), QuantArgs(8, 16, symmetric=False)],
    ids=["int8-channel", "int4-g32", "int4-g32-asym", "int8-g16-asym"],
)
def test_rtn_codes_in_range_and_error_within_half_a_step(args: QuantArgs) -> None:
    weight = _randn(24, 64, seed=1)
    quantized = rtn(weight, args, torch.float32)
    codes = quantized.codes.float()
    assert codes.min() >= args.qmin and codes.max() <= args.qmax
    assert quantized.scale.shape == (24, args.groups(64))
    assert (quantized.zero_point is None) == args.symmetric
    step = quantized.scale.repeat_interleave(args.group_size or 64, dim=1)
    # Symmetric codes saturate at +2**(b-1)-1, so the largest positive value may lose up to one step.
    assert torch.all(
        (quantized.dequantize() - weight).abs() <= step * (0.5 if not args.symmetric else 1.0) + 1e-6
    )


def test_rtn_scales_are_rounded_to_the_artifact_dtype_first() -> None:
    weight = _randn(8, 64, seed=2)
    quantized = rtn(weight, INT4, torch.bfloat16)
    assert quantized.scale.dtype == torch.bfloat16
    expected = quantized.codes.float() * quantized.scale.float().repeat_interleave(32, dim=1)
    assert torch.equal(quantized.dequantize(), expected)


def test_fp8_rtn_is_e4m3_per_channel() -> None:
    weight = _randn(8, 64, seed=3) * torch.logspace(-2, 2, 8)[:, None]
    quantized = rtn(weight, QuantArgs(8, fp8=True), torch.float32)
    assert quantized.codes.dtype == torch.float8_e4m3fn
    assert torch.allclose(quantized.codes.float().abs().amax(dim=1), torch.full((8,), 448.0))
    relative = (quantized.dequantize() - weight).abs() / weight.abs().clamp(min=1e-3 * weight.abs().max())
    assert relative.max() < 0.07


# ---- GPTQ


def _correlated_inputs(tokens: int, features: int, seed: int) -> torch.Tensor:
    """Activations with correlated channels and a few loud ones, like a transformer's."""
    base = _randn(tokens, features // 4, seed=seed) @ _randn(features // 4, features, seed=seed + 1)
    return base + 0.1 * _randn(tokens, features, seed=seed + 2)


def test_hessian_is_twice_the_mean_outer_product() -> None:
    x = _randn(50, 16, seed=4)
    accumulator = gptq.HessianAccumulator(16, torch.device("cpu"))
    for chunk in x.split(13):
        accumulator.add(chunk)
    torch.testing.assert_close(accumulator.hessian, 2 * x.t() @ x / 50, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("args", "act_order"),
    [(INT4, False), (INT4, True), (QuantArgs(4, 32, symmetric=False), False), (QuantArgs(8), False)],
    ids=["int4", "int4-act-order", "int4-asym", "int8-channel"],
)
def test_gptq_beats_rtn_on_correlated_inputs(args: QuantArgs, act_order: bool) -> None:
    weight = _randn(48, 128, seed=5)
    x = _correlated_inputs(512, 128, seed=6)
    accumulator = gptq.HessianAccumulator(128, torch.device("cpu"))
    accumulator.add(x)
    quantized = gptq.gptq(weight, accumulator.hessian, args, torch.float32, act_order=act_order)
    assert quantized.codes.shape == weight.shape and quantized.scale.shape == (48, args.groups(128))
    assert _output_error(x, weight, quantized.dequantize()) < 0.8 * _output_error(
        x, weight, fake_quantize(weight, args, torch.float32)
    )


def test_gptq_zeroes_inputs_that_never_fire() -> None:
    x = _correlated_inputs(256, 64, seed=7)
    x[:, 5] = 0.0
    accumulator = gptq.HessianAccumulator(64, torch.device("cpu"))
    accumulator.add(x)
    quantized = gptq.gptq(_randn(8, 64, seed=8), accumulator.hessian, INT4, torch.float32)
    assert torch.all(quantized.dequantize()[:, 5] == 0)


# ---- SmoothQuant


def test_smoothquant_beats_naive_w8a8_with_activation_outliers() -> None:
    torch.manual_seed(9)
    x = _randn(256, 128, seed=10)
    x[:, [3, 40, 77]] *= 60.0  # outlier channels, as LLM activations have
    weight = _randn(64, 128, seed=11) / 128**0.5
    reference = x @ weight.t()

    def w8a8(inputs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        codes, scale = quantize_activations(inputs, torch.int8)
        return (codes.float() * scale) @ fake_quantize(w, QuantArgs(8), torch.float32).t()

    tracker = smoothquant.ChannelMax()
    tracker.add(x)
    s = smoothquant.smoothing_scale(tracker.value, [weight], alpha=0.8)
    naive = (w8a8(x, weight) - reference).pow(2).mean()
    smoothed = (w8a8(x / s, weight * s) - reference).pow(2).mean()
    assert smoothed < 0.25 * naive
    torch.testing.assert_close((x / s) @ (weight * s).t(), reference, rtol=1e-4, atol=1e-3)


# ---- AWQ


def test_awq_scale_search_never_loses_to_rtn_and_wins_with_salient_channels() -> None:
    x = _randn(512, 128, seed=12)
    x[:, :8] *= 20.0
    weight = _randn(64, 128, seed=13)
    scale = awq.search_scale(x, [weight], INT4, torch.float32)
    awq_weight = fake_quantize(weight * scale, INT4, torch.float32) / scale
    assert _output_error(x, weight, awq_weight) < 0.9 * _output_error(
        x, weight, fake_quantize(weight, INT4, torch.float32)
    )
    plain = awq.search_scale(torch.ones(4, 128), [weight], INT4, torch.float32)
    assert plain.shape == (128,)


def test_awq_clip_only_shrinks_ranges() -> None:
    x = _randn(256, 64, seed=14)
    weight = _randn(16, 64, seed=15)
    clipped = awq.search_clip(x, weight, INT4)
    assert torch.all(clipped.abs() <= weight.abs() + 1e-6)
    assert _output_error(x, weight, fake_quantize(clipped, INT4, torch.float32)) <= _output_error(
        x, weight, fake_quantize(weight, INT4, torch.float32)
    )


# ---- on the tiny model's layers


@pytest.fixture(scope="module")
def layer_inputs(source: Path, calibration_file: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(weight, calibration inputs) of every linear layer of the tiny model's first decoder layer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cairn.services.quantizer import calibration

    tokenizer = AutoTokenizer.from_pretrained(source)
    documents = calibration.read_documents(calibration_file, tokenizer)
    samples = calibration.cut(calibration.tokenize(documents, tokenizer), 64, 8)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    layer = model.model.layers[0]
    captured: dict[str, torch.Tensor] = {}
    paths = [f"self_attn.{n}" for n in LINEARS[:4]] + [f"mlp.{n}" for n in LINEARS[4:]]
    handles = [
        layer.get_submodule(path).register_forward_pre_hook(
            lambda _m, args, path=path: captured.__setitem__(path, args[0].reshape(-1, args[0].shape[-1]))
        )
        for path in paths
    ]
    with torch.no_grad():
        model(samples)
    for handle in handles:
        handle.remove()
    return {path: (layer.get_submodule(path).weight.detach().clone(), x) for path, x in captured.items()}


def test_gptq_and_awq_int4_beat_rtn_on_every_linear_layer(layer_inputs) -> None:
    for path, (weight, x) in layer_inputs.items():
        rtn_error = _output_error(x, weight, fake_quantize(weight, INT4, torch.bfloat16))
        accumulator = gptq.HessianAccumulator(x.shape[1], x.device)
        accumulator.add(x)
        gptq_weight = gptq.gptq(weight, accumulator.hessian, INT4, torch.bfloat16).dequantize()
        scale = awq.search_scale(x, [weight], INT4, torch.bfloat16)
        clipped = awq.search_clip(x / scale, weight * scale, INT4)
        awq_weight = rtn(clipped, INT4, torch.bfloat16).dequantize() / scale
        assert _output_error(x, weight, gptq_weight) < rtn_error, path
        assert _output_error(x, weight, awq_weight) < rtn_error, path


# ---- KV ranges


def test_kv_scales_cover_rotated_keys() -> None:
    keys = _randn(2, 5, 3, 8, seed=16)
    angles = _randn(2, 5, 4, seed=17)
    cos, sin = torch.cat([angles.cos()] * 2, dim=-1), torch.cat([angles.sin()] * 2, dim=-1)
    rotated = rotate(keys, cos, sin)
    # A rotation keeps each pair's length.
    torch.testing.assert_close(
        rotated[..., :4].pow(2) + rotated[..., 4:].pow(2), keys[..., :4].pow(2) + keys[..., 4:].pow(2)
    )
    tracker = KVRange()
    tracker.add(rotated, keys * 3)
    k_scale, v_scale = tracker.scales("int8")
    assert k_scale == pytest.approx(float(rotated.abs().max()) / 127)
    assert v_scale == pytest.approx(float(keys.abs().max()) * 3 / 127)
    assert tracker.scales("fp8")[0] == pytest.approx(float(rotated.abs().max()) / 448)
