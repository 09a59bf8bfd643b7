"""Layer-by-layer quantization of an HF Llama-family model on one device.

The calibration samples' hidden states enter layer 0 (captured from the
model's own forward, with the attention mask and rotary tables it passes),
then, one decoder layer at a time: the layer moves to the device in fp32,
a first pass over the samples gathers what the method needs (GPTQ Hessians,
AWQ inputs, SmoothQuant channel maxima), the method rewrites the layer's
weights (smoothing folded into the norms, weights replaced by their
quantized values), and a second pass computes the layer's outputs with
those quantized weights (and the KV ranges) as the next layer's inputs, so
later layers calibrate on what the quantized model will really feed them.
Only one layer is ever on the device; each is dropped once its results are
kept. Methods without calibration (RTN, FP8) skip the passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cairn.common.errors import InvalidArgument
from cairn.services.quantizer.methods import awq, gptq, smoothquant
from cairn.services.quantizer.methods.kv_range import KVRange, rotate
from cairn.services.quantizer.methods.rtn import QuantArgs, QuantizedWeight, rtn
from cairn.services.quantizer.plan import Method, QuantPlan
from cairn.services.worker.quantization.config import matches_module

Report = Callable[[int, int, str], None]


@dataclass(frozen=True)
class _Group:
    """Linear layers of a decoder layer that read the same input, and what produces that input."""

    name: str
    linears: tuple[str, ...]
    # A norm (its weight divides by the scale) or a linear layer (its output rows do).
    previous: str
    # The worker fuses these layers: they are quantized together or not at all.
    fused: bool


_GROUPS = (
    _Group("qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm", True),
    _Group("o", ("self_attn.o_proj",), "self_attn.v_proj", False),
    _Group("gate_up", ("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm", True),
    _Group("down", ("mlp.down_proj",), "mlp.up_proj", False),
)
# AWQ does not clip q/k: their error is seen through the softmax, not their outputs.
_NO_CLIP = ("self_attn.q_proj", "self_attn.k_proj")


@dataclass
class QuantizedModel:
    # Quantized linear layers by module name (model.layers.0.self_attn.q_proj), on the CPU.
    weights: dict[str, QuantizedWeight] = field(default_factory=dict)
    # Everything else by checkpoint name, fp32 on the CPU (norms after smoothing, biases, embeddings).
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    # Static per-layer (k_scale, v_scale), when calibrated.
    kv_scales: list[tuple[float, float]] | None = None


@dataclass
class _Batch:
    hidden: torch.Tensor
    kwargs: dict[str, Any]


class LayerwiseQuantizer:
    def __init__(self, plan: QuantPlan, device: torch.device, report: Report, batch_size: int = 8) -> None:
        self.plan = plan
        self.device = device
        self.report = report
        self.batch_size = batch_size
        self.scale_dtype = getattr(torch, plan.dtype)
        self.args = (
            None
            if plan.method == Method.KV_CACHE_ONLY
            else QuantArgs(plan.bits, plan.group_size, plan.symmetric, fp8=plan.method == Method.FP8)
        )
        self.kv_static = plan.kv_cache is not None and plan.kv_cache.static_scales

    def run(self, model: nn.Module, samples: torch.Tensor | None) -> QuantizedModel:
        """Quantize `model` (an HF *ForCausalLM of the Llama family, on the CPU) calibrating on
        `samples` `[n, seq_len]` token ids, or on nothing (methods that need no data)."""
        layers = model.model.layers
        result = QuantizedModel(kv_scales=[] if self.kv_static else None)
        with torch.no_grad():
            batches = None if samples is None else self._capture(model, samples)
            for index, layer in enumerate(layers):
                self.report(index, len(layers), f"quantizing layer {index + 1}/{len(layers)}")
                prefix = f"model.layers.{index}."
                layer.to(self.device, torch.float32)
                selected = self._selected(prefix)
                observed = self._observe(layer, batches) if batches is not None else {}
                self._quantize_layer(layer, prefix, selected, observed, result)
                if batches is not None and (self.kv_static or index + 1 < len(layers)):
                    kv = KVRange()
                    batches = self._forward(layer, batches, kv)
                    if self.kv_static:
                        result.kv_scales.append(kv.scales(self.plan.kv_cache.dtype))
                quantized = {f"{name}.weight" for name in selected if selected[name]}
                for name, tensor in layer.state_dict().items():
                    if name not in quantized:
                        result.tensors[prefix + name] = tensor.detach().float().cpu().clone()
                layer.to("meta")
        for name, tensor in model.state_dict().items():
            if not name.startswith("model.layers."):
                result.tensors[name] = tensor.detach().float().cpu()
        self.report(len(layers), len(layers), "quantized every layer")
        return result

    # ---- what is quantized

    def _selected(self, prefix: str) -> dict[str, bool]:
        """Local linear name -> quantized; fused groups must be quantized whole. Names match `ignore`
        as the worker matches them (compressed-tensors rules), so both agree on what is quantized."""
        selected = {
            name: self.args is not None
            and not any(matches_module(prefix + name, p) for p in self.plan.ignore)
            for group in _GROUPS
            for name in group.linears
        }
        for group in _GROUPS:
            decisions = {selected[name] for name in group.linears}
            if group.fused and len(decisions) > 1:
                names = ", ".join(prefix + name for name in group.linears)
                raise InvalidArgument(
                    f"ignore leaves only some of {names} unquantized; the worker fuses them, so ignore all "
                    "or none of them"
                )
        return selected

    # ---- calibration passes

    def _capture(self, model: nn.Module, samples: torch.Tensor) -> list[_Batch]:
        """Layer 0's inputs for every batch of samples, as the model's forward computes them."""
        inner = model.model
        inner.embed_tokens.to(self.device)
        inner.rotary_emb.to(self.device)
        batches = []
        for start in range(0, samples.shape[0], self.batch_size):
            ids = samples[start : start + self.batch_size].to(self.device)
            with _stop_at(inner.layers[0]) as caught:
                inner(input_ids=ids, use_cache=False)
            batches.append(_Batch(caught["hidden"].float(), _to_fp32(caught["kwargs"])))
        inner.embed_tokens.to("cpu")
        inner.rotary_emb.to("cpu")
        return batches

    def _observe(self, layer: nn.Module, batches: list[_Batch]) -> dict[str, Any]:
        """One pass over the samples collecting, per group, what the method needs of its inputs."""
        method = self.plan.method
        if method == Method.GPTQ:
            stats = {
                g.name: gptq.HessianAccumulator(self._linear(layer, g.linears[0]).in_features, self.device)
                for g in _GROUPS
            }
        elif method == Method.AWQ:
            stats = {g.name: [] for g in _GROUPS}
        elif method == Method.SMOOTH_QUANT:
            stats = {g.name: smoothquant.ChannelMax() for g in _GROUPS}
        else:
            return {}

        def hook(group: str) -> Callable[..., None]:
            def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
                x = inputs[0].reshape(-1, inputs[0].shape[-1])
                if isinstance(stats[group], list):
                    stats[group].append(x)
                else:
                    stats[group].add(x)

            return record

        handles = [self._linear(layer, g.linears[0]).register_forward_pre_hook(hook(g.name)) for g in _GROUPS]
        try:
            for batch in batches:
                layer(batch.hidden, **batch.kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if method == Method.AWQ:
            return {name: torch.cat(xs) for name, xs in stats.items()}
        return stats

    def _forward(self, layer: nn.Module, batches: list[_Batch], kv: KVRange) -> list[_Batch]:
        """The layer's outputs (with its quantized weights) for every batch; K/V ranges on the way."""
        attention = layer.self_attn
        head_dim = attention.head_dim
        seen: dict[str, torch.Tensor] = {}
        handles = [
            attention.k_proj.register_forward_hook(lambda _m, _i, out: seen.__setitem__("k", out)),
            attention.v_proj.register_forward_hook(lambda _m, _i, out: seen.__setitem__("v", out)),
        ]
        outputs = []
        try:
            for batch in batches:
                out = layer(batch.hidden, **batch.kwargs)
                if self.kv_static:
                    cos, sin = batch.kwargs["position_embeddings"]
                    keys = seen["k"].view(*seen["k"].shape[:2], -1, head_dim)
                    kv.add(rotate(keys, cos, sin), seen["v"])
                outputs.append(_Batch(out[0] if isinstance(out, tuple) else out, batch.kwargs))
        finally:
            for handle in handles:
                handle.remove()
        return outputs

    # ---- the methods

    def _quantize_layer(
        self,
        layer: nn.Module,
        prefix: str,
        selected: dict[str, bool],
        observed: dict[str, Any],
        result: QuantizedModel,
    ) -> None:
        method = self.plan.method
        if method == Method.SMOOTH_QUANT:
            for group in _GROUPS:
                if group.previous.endswith("norm"):
                    weights = [self._linear(layer, n).weight for n in group.linears]
                    scale = smoothquant.smoothing_scale(observed[group.name].value, weights, self.plan.alpha)
                    self._fold(layer, group, scale)
        elif method == Method.AWQ:
            for group in _GROUPS:
                if self._can_fold(layer, group):
                    weights = [self._linear(layer, n).weight for n in group.linears]
                    scale = awq.search_scale(observed[group.name], weights, self.args, self.scale_dtype)
                    self._fold(layer, group, scale)
                    observed[group.name] = observed[group.name] / scale
        for group in _GROUPS:
            for name in group.linears:
                if not selected[name]:
                    continue
                linear = self._linear(layer, name)
                if method == Method.GPTQ:
                    quantized = gptq.gptq(
                        linear.weight, observed[group.name].hessian, self.args, self.scale_dtype,
                        damp_percent=self.plan.damp_percent, act_order=self.plan.act_order,
                    )  # fmt: skip
                elif method == Method.AWQ and name not in _NO_CLIP:
                    clipped = awq.search_clip(observed[group.name], linear.weight, self.args)
                    quantized = rtn(clipped, self.args, self.scale_dtype)
                else:
                    quantized = rtn(linear.weight, self.args, self.scale_dtype)
                linear.weight.copy_(quantized.dequantize())
                result.weights[prefix + name] = quantized.to("cpu")

    def _can_fold(self, layer: nn.Module, group: _Group) -> bool:
        """A scale can move into the previous layer when it produces exactly this group's input
        (not for o_proj under grouped-query attention, whose input has more channels than v_proj's output)."""
        if group.previous.endswith("norm"):
            return True
        return (
            self._linear(layer, group.previous).out_features
            == self._linear(layer, group.linears[0]).in_features
        )

    def _fold(self, layer: nn.Module, group: _Group, scale: torch.Tensor) -> None:
        """Multiply the group's weight columns by `scale` and divide the producer of its input by it."""
        for name in group.linears:
            self._linear(layer, name).weight.mul_(scale[None, :])
        previous = layer.get_submodule(group.previous)
        if group.previous.endswith("norm"):
            previous.weight.div_(scale)
        else:
            previous.weight.div_(scale[:, None])
            if previous.bias is not None:
                previous.bias.div_(scale)

    @staticmethod
    def _linear(layer: nn.Module, name: str) -> nn.Linear:
        return layer.get_submodule(name)


class _Stop(Exception):
    """Raised in layer 0's pre-hook once its inputs are captured: the rest of the forward is not needed."""


@contextmanager
def _stop_at(layer: nn.Module) -> Iterator[dict[str, Any]]:
    caught: dict[str, Any] = {}

    def capture(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        caught["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        caught["kwargs"] = dict(kwargs)
        raise _Stop

    handle = layer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        yield caught
    except _Stop:
        pass
    finally:
        handle.remove()


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_to_fp32(v) for v in value)
    return value
