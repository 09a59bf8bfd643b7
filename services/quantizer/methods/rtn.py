"""Round-to-nearest quantization of weight matrices, and the quantized-weight type every method returns.

Conventions are compressed-tensors' (what vLLM reads): signed INT codes in
[-2**(b-1), 2**(b-1) - 1]; a symmetric scale maps the largest magnitude of a
row (or group) to half the code range, `absmax / ((qmax - qmin) / 2)`; an
asymmetric one maps [min(w, 0), max(w, 0)] onto the full range with an
integer zero point. FP8 is e4m3 with `absmax / 448`. Scales are rounded to
the artifact's dtype *before* the codes are computed, so dequantizing the
stored codes with the stored scales gives exactly the weights evaluated here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
_MIN_SCALE = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class QuantArgs:
    bits: int = 8
    # None: one scale per output channel.
    group_size: int | None = None
    symmetric: bool = True
    fp8: bool = False

    @property
    def qmin(self) -> float:
        return -FP8_MAX if self.fp8 else -(2.0 ** (self.bits - 1))

    @property
    def qmax(self) -> float:
        return FP8_MAX if self.fp8 else 2.0 ** (self.bits - 1) - 1

    def groups(self, in_features: int) -> int:
        return 1 if self.group_size is None else in_features // self.group_size


@dataclass
class QuantizedWeight:
    """`codes` `[out, in]` (int8 holding `bits`-bit values, or float8), `scale` `[out, groups]` in the
    artifact dtype, `zero_point` `[out, groups]` int8 for asymmetric INT."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    args: QuantArgs

    def dequantize(self) -> torch.Tensor:
        """fp32 `[out, in]`."""
        return dequantize(self.codes, self.scale, self.zero_point, self.args)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        zero_point = None if self.zero_point is None else self.zero_point.to(device)
        return QuantizedWeight(self.codes.to(device), self.scale.to(device), zero_point, self.args)


def _per_group(values: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    """`[out, groups]` -> `[out, in]`, each group's value repeated over its columns."""
    return values.repeat_interleave(args.group_size, dim=1) if args.group_size else values


def fit(
    weight: torch.Tensor, args: QuantArgs, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min-max (scale, zero point) per output row and group of `weight` `[out, in]`."""
    rows = weight.shape[0]
    grouped = weight.float().reshape(rows, args.groups(weight.shape[1]), -1)
    low = grouped.amin(dim=-1).clamp(max=0.0)
    high = grouped.amax(dim=-1).clamp(min=0.0)
    if args.symmetric:
        half_range = (args.qmax - args.qmin) / 2 if not args.fp8 else FP8_MAX
        scale = torch.maximum(-low, high) / half_range
        zero_point = None
    else:
        scale = (high - low) / (args.qmax - args.qmin)
    scale = scale.clamp(min=_MIN_SCALE).to(scale_dtype)
    if not args.symmetric:
        zero_point = (args.qmin - torch.round(low / scale.float())).clamp(args.qmin, args.qmax).to(torch.int8)
    return scale, zero_point


def quantize(
    weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, args: QuantArgs
) -> torch.Tensor:
    """Codes of `weight` `[out, cols]` given `scale` / `zero_point` broadcastable to it."""
    scaled = weight.float() / scale.float()
    if args.fp8:
        return scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    if zero_point is not None:
        scaled = scaled + zero_point.float()
    return torch.round(scaled).clamp(args.qmin, args.qmax).to(torch.int8)


def dequantize(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, args: QuantArgs
) -> torch.Tensor:
    values = codes.float()
    if zero_point is not None:
        values = values - _per_group(zero_point.float(), args)
    return values * _per_group(scale.float(), args)


def rtn(weight: torch.Tensor, args: QuantArgs, scale_dtype: torch.dtype) -> QuantizedWeight:
    scale, zero_point = fit(weight, args, scale_dtype)
    expanded_zero = None if zero_point is None else _per_group(zero_point, args)
    codes = quantize(weight, _per_group(scale, args), expanded_zero, args)
    return QuantizedWeight(codes, scale, zero_point, args)


def fake_quantize(weight: torch.Tensor, args: QuantArgs, scale_dtype: torch.dtype) -> torch.Tensor:
    """RTN then back to fp32: the weights the quantized layer will compute with."""
    return rtn(weight, args, scale_dtype).dequantize()
