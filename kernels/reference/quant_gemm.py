"""Quantized GEMMs: weight-only INT4/INT8 (dequantize, then matmul) and W8A8 INT8/FP8 with scales.

`y = x @ W.T (+ bias)` for W `[N, K]`. Weight-only: W is packed as in
`cairn.kernels.quant_layout`. W8A8: codes of x (per-token or per-tensor
scale) and of W (per-channel scale) are multiplied exactly, then scaled.
"""

from __future__ import annotations

import torch

from cairn.kernels.quant_layout import unpack_weight


def dequantize_weight(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int, group_size: int
) -> torch.Tensor:
    """The packed weight as fp32 `[N, K]`: (code - zero) * scale, group by group along K."""
    codes = unpack_weight(qweight, bits).float()
    zero = 2.0 ** (bits - 1) if zeros is None else zeros.float().t().repeat_interleave(group_size, dim=1)
    return (codes - zero) * scales.float().t().repeat_interleave(group_size, dim=1)


def weight_only_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    weight = dequantize_weight(qweight, scales, zeros, bits, group_size)
    out = x.float() @ weight.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def scaled_gemm(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    w_codes: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """x codes `[M, K]` with scale `[M, 1]` or `[1]`, W codes `[N, K]` with scale `[N]` -> `[M, N]`."""
    if x_codes.dtype == torch.int8 and (x_codes.device.type == "cpu" or x_codes.shape[0] > 16):
        # Exact int32 accumulation, as the GPU kernels do.
        product = torch._int_mm(x_codes, w_codes.t()).float()
    elif x_codes.dtype == torch.int8:
        # CUDA's _int_mm wants more than 16 rows; float64 holds these int32 sums exactly too.
        product = (x_codes.double() @ w_codes.double().t()).float()
    else:
        product = x_codes.float() @ w_codes.float().t()
    out = product * x_scale.float() * w_scale.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)
