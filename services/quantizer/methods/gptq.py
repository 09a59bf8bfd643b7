"""GPTQ (Frantar et al., 2022): column-by-column quantization that pushes each column's rounding error
onto the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs.

The Hessian is H = 2/n sum(x x^T) over the calibration inputs of the layer.
Columns go in blocks of `block_size` with lazy batch updates. Groups take
their scales when their first column is reached, from the weights as updated
so far. With `act_order`, columns are visited in order of decreasing Hessian
diagonal (activation energy) while every group keeps its scales, fitted
up front on the original columns: the stored layout stays the plain grouped
one (compressed-tensors' `actorder: weight`), no g_idx needed to serve it.
"""

from __future__ import annotations

import torch

from cairn.common.errors import InvalidArgument
from cairn.services.quantizer.methods.rtn import QuantArgs, QuantizedWeight, dequantize, fit, quantize


class HessianAccumulator:
    """Running H = 2/n sum(x x^T) over every input row seen (fp32, on the inputs' device)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.count = 0

    def add(self, inputs: torch.Tensor) -> None:
        rows = inputs.reshape(-1, inputs.shape[-1]).float()
        total = self.count + rows.shape[0]
        self.hessian *= self.count / total
        rows = rows * (2.0 / total) ** 0.5
        self.hessian += rows.t() @ rows
        self.count = total


def gptq(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    args: QuantArgs,
    scale_dtype: torch.dtype,
    *,
    damp_percent: float = 0.01,
    act_order: bool = False,
    block_size: int = 128,
) -> QuantizedWeight:
    """Quantize `weight` `[out, in]` given its inputs' Hessian `[in, in]`."""
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    out_features, columns = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    groups = args.groups(columns)
    scale = torch.empty(out_features, groups, dtype=scale_dtype, device=w.device)
    zero_point = (
        None if args.symmetric else torch.empty(out_features, groups, dtype=torch.int8, device=w.device)
    )
    static_groups = act_order or args.group_size is None
    if static_groups:
        scale, zero_point = fit(w, args, scale_dtype)

    perm = torch.argsort(torch.diag(h), descending=True) if act_order else None
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]
    h_inv = _inverse_hessian_cholesky(h, damp_percent)

    codes = torch.zeros(out_features, columns, dtype=torch.int8, device=w.device)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = w[:, start:end].clone()
        errors = torch.zeros_like(block)
        h_inv_block = h_inv[start:end, start:end]
        for i in range(end - start):
            column = start + i
            original = int(perm[column]) if perm is not None else column
            group = original // args.group_size if args.group_size else 0
            if not static_groups and original % args.group_size == 0:
                # The group's columns as updated so far: the rest of this block, then beyond it.
                span = torch.cat((block[:, i:], w[:, end:]), dim=1)[:, : args.group_size]
                group_scale, group_zero = fit(span, QuantArgs(args.bits, None, args.symmetric), scale_dtype)
                scale[:, group : group + 1] = group_scale
                if zero_point is not None:
                    zero_point[:, group : group + 1] = group_zero
            column_scale = scale[:, group]
            column_zero = None if zero_point is None else zero_point[:, group]
            q = quantize(block[:, i], column_scale, column_zero, args)
            codes[:, column] = q
            flat = QuantArgs(args.bits, None, args.symmetric)
            dequantized = dequantize(
                q[:, None], column_scale[:, None], None if column_zero is None else column_zero[:, None], flat
            )[:, 0]
            error = (block[:, i] - dequantized) / h_inv_block[i, i]
            block[:, i:] -= error[:, None] * h_inv_block[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ h_inv[start:end, end:]
    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    return QuantizedWeight(codes, scale, zero_point, args)


def _inverse_hessian_cholesky(h: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor of the dampened Hessian's inverse, as GPTQ's updates use it."""
    damp = damp_percent * torch.mean(torch.diag(h))
    h = h + damp * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    try:
        return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError:
        raise InvalidArgument(
            "GPTQ: a layer's input Hessian is not positive definite even after dampening; raise "
            f"damp_percent (now {damp_percent}) or calibrate on more, more varied samples"
        ) from None
