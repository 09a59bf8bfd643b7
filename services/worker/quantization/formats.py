"""Checkpoint tensors of one quantized linear layer -> the worker's layout, per producer.

Weight-only layers end up as `qweight` (`cairn.kernels.quant_layout`: int32
`[K // pack, n]`), `scales` and optional `zeros` (`[groups, n]`, zeros as
unsigned codes) and an optional act-order `g_idx` (`[K]`). W8A8 layers as
`qweight` codes `[n, K]`, a per-channel fp32 `weight_scale` `[n]` and an
optional static `input_scale`. Each reader names the tensors a layer needs,
so the loader knows when a layer is complete whatever the checkpoint order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cairn.common.errors import InvalidArgument
from cairn.kernels.quant_layout import pack_weight, unpack_codes
from cairn.services.worker.quantization.config import WEIGHT_ONLY, WeightScheme

Tensors = dict[str, torch.Tensor]

# Tensors a layer may carry that the worker does not need: they may arrive after the layer is complete.
OPTIONAL_TENSORS = frozenset({"weight_shape", "g_idx", "weight_g_idx"})
# AutoAWQ packs eight 4-bit columns per word in this order; REVERSE undoes it.
_AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_AWQ_REVERSE = tuple(_AWQ_ORDER.index(i) for i in range(8))


def required_tensors(scheme: WeightScheme, tensors: Tensors) -> set[str]:
    """Suffixes a layer needs before it can be converted (given what has arrived so far)."""
    fmt = scheme.checkpoint_format
    if scheme.method != WEIGHT_ONLY:
        return {"weight", "weight_scale"} | ({"input_scale"} if scheme.static_input_scale else set())
    if fmt == "compressed-tensors":
        needed = {"weight_scale"} | ({"weight_zero_point"} if scheme.has_zeros else set())
        needed |= {"weight_g_idx"} if scheme.act_order else set()
        return needed | ({"weight"} if "weight" in tensors else {"weight_packed"})
    needed = {"qweight", "qzeros", "scales"}
    return needed | ({"g_idx"} if fmt.startswith("gptq") and scheme.act_order else set())


def convert(scheme: WeightScheme, tensors: Tensors, rows: int, in_features: int) -> Tensors:
    """One checkpoint layer (`rows` output channels) in the worker's layout."""
    readers: dict[str, Callable[[WeightScheme, Tensors, int], Tensors]] = {
        "compressed-tensors": _compressed_tensors,
        "gptq": _gptq,
        "gptq_v2": _gptq,
        "awq": _awq,
    }
    if scheme.method != WEIGHT_ONLY:
        return _w8a8(tensors, rows)
    out = readers[scheme.checkpoint_format](scheme, tensors, rows)
    if out["qweight"].shape[0] * 32 // scheme.bits != in_features:
        raise InvalidArgument(
            f"packed weight covers {out['qweight'].shape[0] * 32 // scheme.bits} inputs, "
            f"the layer has {in_features}"
        )
    return out


def _compressed_tensors(scheme: WeightScheme, tensors: Tensors, rows: int) -> Tensors:
    bits, offset = scheme.bits, 2 ** (scheme.bits - 1)
    if "weight_packed" in tensors:
        shape = tensors.get("weight_shape")
        if shape is not None and int(shape[0]) != rows:
            raise InvalidArgument(f"weight_shape {shape.tolist()} does not have {rows} rows")
        # compressed-tensors packs each row along K with codes offset by 2**(bits-1): our layout, transposed.
        qweight = tensors["weight_packed"].t().contiguous()
    else:
        qweight = pack_weight(tensors["weight"].to(torch.int32) + offset, bits)
    out = {"qweight": qweight, "scales": tensors["weight_scale"].t().contiguous()}
    if scheme.has_zeros:
        zero_point = tensors["weight_zero_point"]
        if zero_point.dtype == torch.int32:
            # Packed along the output dimension, offset like the weight codes.
            out["zeros"] = unpack_codes(zero_point.t().contiguous(), bits)[:, :rows]
        else:
            out["zeros"] = (zero_point.to(torch.int32) + offset).t().contiguous()
    if scheme.act_order:
        out["g_idx"] = tensors["weight_g_idx"]
    return out


def _gptq(scheme: WeightScheme, tensors: Tensors, rows: int) -> Tensors:
    zeros = unpack_codes(tensors["qzeros"], scheme.bits)[:, :rows]
    if scheme.checkpoint_format == "gptq":
        # GPTQ v1 stores every zero point minus one (AutoGPTQ's historical off-by-one).
        zeros = zeros + 1
    out = {"qweight": tensors["qweight"], "scales": tensors["scales"], "zeros": zeros}
    if scheme.act_order:
        out["g_idx"] = tensors["g_idx"]
    return out


def _awq(scheme: WeightScheme, tensors: Tensors, rows: int) -> Tensors:
    def natural(words: torch.Tensor) -> torch.Tensor:
        codes = unpack_codes(words, 4)
        index = torch.arange(codes.shape[1], device=codes.device).view(-1, 8)[:, list(_AWQ_REVERSE)]
        return codes[:, index.flatten()][:, :rows]

    return {
        "qweight": pack_weight(natural(tensors["qweight"]).t(), 4),
        "scales": tensors["scales"],
        "zeros": natural(tensors["qzeros"]),
    }


def _w8a8(tensors: Tensors, rows: int) -> Tensors:
    scale = tensors["weight_scale"].float().reshape(-1)
    out = {"qweight": tensors["weight"], "weight_scale": scale.expand(rows).contiguous()}
    if "input_scale" in tensors:
        out["input_scale"] = tensors["input_scale"].float().reshape(1)
    return out
