"""Quantized replacements of `nn.Linear`: weight-only INT4/INT8 and W8A8 INT8/FP8.

They keep `nn.Linear`'s call contract (`[T, in] -> [T, out]`, optional bias
parameter) so the model code does not change; the quantized tensors are
buffers, filled shard by shard (fused q/k/v and gate/up) by the loader.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cairn.common.errors import InvalidArgument
from cairn.kernels import quant_dispatch
from cairn.kernels.quant_layout import pack_factor, pack_weight, unpack_weight
from cairn.services.worker.quantization.config import W8A8_FP8, WEIGHT_ONLY, WeightScheme
from cairn.services.worker.quantization.formats import Tensors

# Random weights of about this standard deviation (dummy loads), like init_dummy_weights.
_DUMMY_STD = 0.02


class QuantizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype)) if bias else None
        # Output offsets of the shards installed so far.
        self.loaded: set[int] = set()

    def load_shard(self, offset: int, tensors: Tensors) -> None:
        """Install output channels [offset, offset + n) from `formats.convert`'s result."""
        raise NotImplementedError

    def finish_loading(self) -> None:
        """Called once every shard is in."""

    def init_dummy(self, generator: torch.Generator) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class WeightOnlyLinear(QuantizedLinear):
    """W4A16 / W8A16: packed codes dequantized inside the GEMM."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, scheme: WeightScheme, dtype: torch.dtype
    ) -> None:
        super().__init__(in_features, out_features, bias, dtype)
        self.bits = scheme.bits
        self.group_size = scheme.group_size or in_features
        pack = pack_factor(scheme.bits)
        if in_features % self.group_size or in_features % pack:
            raise InvalidArgument(
                f"a linear layer with {in_features} inputs cannot hold {scheme.bits}-bit weights in groups "
                f"of {self.group_size} (the group size must divide the input size)"
            )
        groups = in_features // self.group_size
        self.register_buffer("qweight", torch.empty(in_features // pack, out_features, dtype=torch.int32))
        self.register_buffer("scales", torch.empty(groups, out_features, dtype=dtype))
        self.register_buffer(
            "zeros", torch.empty(groups, out_features, dtype=dtype) if scheme.has_zeros else None
        )
        # Act-order checkpoints: inputs are gathered in this order so each group is contiguous.
        self.register_buffer(
            "perm", torch.empty(in_features, dtype=torch.int64) if scheme.act_order else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        return quant_dispatch.weight_only_gemm(
            x, self.qweight, self.scales, self.zeros, self.bits, self.group_size, self.bias
        )

    def load_shard(self, offset: int, tensors: Tensors) -> None:
        qweight = tensors["qweight"].to(self.qweight.device)
        rows = qweight.shape[1]
        if "g_idx" in tensors:
            qweight = self._apply_act_order(tensors["g_idx"].to(self.qweight.device), qweight)
        columns = slice(offset, offset + rows)
        self.qweight[:, columns] = qweight
        self.scales[:, columns] = tensors["scales"]
        if self.zeros is not None:
            self.zeros[:, columns] = tensors["zeros"].to(self.zeros.dtype)
        self.loaded.add(offset)

    def _apply_act_order(self, g_idx: torch.Tensor, qweight: torch.Tensor) -> torch.Tensor:
        """Reorder K so every group is contiguous; fused shards must agree on the order."""
        groups = torch.arange(self.in_features, device=g_idx.device) // self.group_size
        perm = torch.argsort(g_idx.long(), stable=True)
        if not torch.equal(g_idx.long()[perm], groups):
            raise InvalidArgument("act-order g_idx does not give every group exactly group_size inputs")
        if self.loaded and not torch.equal(perm, self.perm):
            raise InvalidArgument("fused layers (q/k/v or gate/up) carry different act-order permutations")
        self.perm.copy_(perm)
        return pack_weight(unpack_weight(qweight, self.bits)[:, perm], self.bits)

    def finish_loading(self) -> None:
        # An identity act order would cost a gather for nothing.
        identity = torch.arange(self.in_features, device=self.qweight.device)
        if self.perm is not None and torch.equal(self.perm, identity):
            self.perm = None

    def init_dummy(self, generator: torch.Generator) -> None:
        device = self.qweight.device
        self.qweight.copy_(
            torch.randint(-(2**31), 2**31 - 1, self.qweight.shape, generator=generator, device=device)
        )
        # Uniform codes have std 2**(bits-1) / sqrt(3) around the midpoint.
        self.scales.fill_(_DUMMY_STD * math.sqrt(3) / 2 ** (self.bits - 1))
        if self.zeros is not None:
            self.zeros.fill_(2 ** (self.bits - 1))
        self.perm = None


class W8A8Linear(QuantizedLinear):
    """INT8 or FP8 weights and activations: the input is quantized per token (or with a static
    per-tensor scale) and multiplied code by code."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, scheme: WeightScheme, dtype: torch.dtype
    ) -> None:
        super().__init__(in_features, out_features, bias, dtype)
        codes = torch.float8_e4m3fn if scheme.method == W8A8_FP8 else torch.int8
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=codes))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32))
        self.register_buffer(
            "input_scale", torch.zeros(1, dtype=torch.float32) if scheme.static_input_scale else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes, scale = quant_dispatch.quantize_activations(x, self.qweight.dtype, self.input_scale)
        return quant_dispatch.scaled_gemm(codes, scale, self.qweight, self.weight_scale, self.bias, x.dtype)

    def load_shard(self, offset: int, tensors: Tensors) -> None:
        codes = tensors["qweight"]
        if codes.dtype != self.qweight.dtype or codes.shape[1] != self.in_features:
            raise InvalidArgument(
                f"W8A8 weight of {codes.dtype} {tuple(codes.shape)} does not fit a layer of "
                f"{self.qweight.dtype} with {self.in_features} inputs"
            )
        rows = slice(offset, offset + codes.shape[0])
        self.qweight[rows] = codes
        self.weight_scale[rows] = tensors["weight_scale"]
        if self.input_scale is not None:
            # Fused layers share one input: the largest shard scale covers all of them.
            scale = tensors["input_scale"].to(self.input_scale)
            self.input_scale.copy_(torch.maximum(self.input_scale, scale) if self.loaded else scale)
        self.loaded.add(offset)

    def init_dummy(self, generator: torch.Generator) -> None:
        device = self.qweight.device
        if self.qweight.dtype == torch.int8:
            self.qweight.copy_(
                torch.randint(-127, 128, self.qweight.shape, generator=generator, device=device)
            )
            self.weight_scale.fill_(_DUMMY_STD * math.sqrt(3) / 127)
        else:
            values = torch.randn(self.qweight.shape, generator=generator, device=device)
            self.qweight.copy_(values.to(self.qweight.dtype))
            self.weight_scale.fill_(_DUMMY_STD)
        if self.input_scale is not None:
            self.input_scale.fill_(1.0)


def quantized_linear(linear: nn.Linear, scheme: WeightScheme, dtype: torch.dtype) -> QuantizedLinear:
    """The quantized counterpart of `linear` (built on whatever device is current, e.g. meta)."""
    kind = WeightOnlyLinear if scheme.method == WEIGHT_ONLY else W8A8Linear
    return kind(linear.in_features, linear.out_features, linear.bias is not None, scheme, dtype)
