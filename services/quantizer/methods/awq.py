"""AWQ (Lin et al., 2023): activation-aware per-input-channel scales, then clipping, then INT4 RTN.

Channels that see large activations matter most, so their weights are
scaled up before quantization (less relative rounding error) and the inverse
scale is folded into whatever produces the layer's input (a norm, or the
previous linear layer). The scale is `mean|x|^r / mean|w|^(1-r)` for the
ratio r on a grid that minimizes the layers' output error on the calibration
inputs; s = 1 (plain RTN) is always a candidate, so AWQ never does worse than
RTN on those inputs. Then each output row's and group's clipping range is
shrunk where that lowers the group's output error.
"""

from __future__ import annotations

import torch

from cairn.services.quantizer.methods.rtn import QuantArgs, fake_quantize

_MIN_SCALE = 1e-4


def search_scale(
    inputs: torch.Tensor,
    weights: list[torch.Tensor],
    args: QuantArgs,
    scale_dtype: torch.dtype,
    grid: int = 20,
    max_tokens: int = 8192,
) -> torch.Tensor:
    """The per-input-channel scale `[in]` minimizing the error of `x @ Q(W * s).T / s`, for the layers
    (`[out_i, in]` each) that share `inputs` `[tokens, in]` (evenly subsampled to `max_tokens`)."""
    x = _subsample(inputs, max_tokens)
    w = torch.cat([weight.float() for weight in weights])
    reference = x @ w.t()
    x_mean = x.abs().mean(dim=0)
    w_mean = _normalized_weight_magnitude(w, args).mean(dim=0)
    best_scale = torch.ones_like(x_mean)
    best_error = _mse(x @ fake_quantize(w, args, scale_dtype).t(), reference)
    for step in range(grid):
        ratio = step / grid
        scale = (x_mean.pow(ratio) / w_mean.pow(1 - ratio)).clamp(min=_MIN_SCALE)
        scale = scale / (scale.max() * scale.min()).sqrt()
        error = _mse(x @ (fake_quantize(w * scale, args, scale_dtype) / scale).t(), reference)
        if error < best_error:
            best_error, best_scale = error, scale
    return best_scale


def search_clip(
    inputs: torch.Tensor,
    weight: torch.Tensor,
    args: QuantArgs,
    grid: int = 20,
    max_shrink: float = 0.5,
    max_tokens: int = 2048,
    rows_per_batch: int = 256,
) -> torch.Tensor:
    """`weight` `[out, in]` with each output row's group clipped to the range (shrunk by up to
    `max_shrink`) that minimizes the group's share of the output error on `inputs`."""
    x = _subsample(inputs, max_tokens)
    rows, columns = weight.shape
    group = args.group_size or columns
    x_groups = x.reshape(x.shape[0], columns // group, group)
    per_group = QuantArgs(args.bits, group, args.symmetric)
    clipped = [
        _clip_rows(x_groups, chunk.float().reshape(chunk.shape[0], columns // group, group), per_group, grid,
                   max_shrink)
        for chunk in weight.split(rows_per_batch)
    ]  # fmt: skip
    return torch.cat(clipped).reshape(rows, columns)


def _clip_rows(
    x_groups: torch.Tensor, w_groups: torch.Tensor, args: QuantArgs, grid: int, max_shrink: float
) -> torch.Tensor:
    rows, groups, group = w_groups.shape
    reference = torch.einsum("tgc,ogc->tog", x_groups, w_groups)
    high = w_groups.amax(dim=-1, keepdim=True)
    low = w_groups.amin(dim=-1, keepdim=True)
    best = w_groups
    best_error = torch.full((rows, groups), float("inf"), device=w_groups.device)
    for step in range(int(max_shrink * grid) + 1):
        shrink = 1 - step / grid
        if args.symmetric:
            limit = torch.maximum(high, -low) * shrink
            clipped = w_groups.clamp(-limit, limit)
        else:
            clipped = torch.minimum(torch.maximum(w_groups, low * shrink), high * shrink)
        quantized = fake_quantize(clipped.reshape(rows, groups * group), args, torch.float32)
        quantized = quantized.reshape(rows, groups, group)
        error = (torch.einsum("tgc,ogc->tog", x_groups, quantized) - reference).pow(2).mean(dim=0)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best = torch.where(better[..., None], clipped, best)
    return best


def _subsample(inputs: torch.Tensor, max_tokens: int) -> torch.Tensor:
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    if x.shape[0] <= max_tokens:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, max_tokens, device=x.device).long()]


def _normalized_weight_magnitude(w: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    """|w| relative to the largest |w| of its row's group, so scales compare across groups."""
    rows, columns = w.shape
    group = args.group_size or columns
    grouped = w.abs().reshape(rows, columns // group, group)
    grouped = grouped / grouped.amax(dim=-1, keepdim=True).clamp(min=1e-12)
    return grouped.reshape(rows, columns)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean())
