"""Building a model's quantized layers and routing a checkpoint's quantized tensors into them.

`quantize_model` swaps each `nn.Linear` the checkpoint quantizes for its
quantized counterpart while the model is still on the meta device (nothing
is allocated twice) and gives attention layers k/v scale buffers when the KV
cache has static scales. `QuantizedCheckpoint.route` then sits between the
checkpoint reader and the model's `load_weights`: tensors of quantized layers
and KV scales are taken out of the stream and installed here, one layer at a
time; everything else (embeddings, norms, biases, unquantized layers) flows
on unchanged. The LM head stays in full precision for the logits' sake; a
checkpoint that quantized it is dequantized on the way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from cairn.common.errors import InvalidArgument
from cairn.kernels.reference.quant_gemm import dequantize_weight
from cairn.services.worker.models.llama import _FUSED
from cairn.services.worker.quantization import formats
from cairn.services.worker.quantization.config import WEIGHT_ONLY, QuantConfig, WeightScheme
from cairn.services.worker.quantization.linear import QuantizedLinear, quantized_linear

_UNFUSED = {fused: [name for name, (f, _) in _FUSED.items() if f == fused] for fused, _ in _FUSED.values()}
_LM_HEAD = "lm_head"
# Names checkpoints give the per-layer static KV scales (compressed-tensors; the older output_scale form).
_KV_SCALE_NAMES = {
    "self_attn.k_scale": "k_scale",
    "self_attn.v_scale": "v_scale",
    "self_attn.k_proj.output_scale": "k_scale",
    "self_attn.v_proj.output_scale": "v_scale",
}


def quantize_model(model: nn.Module, config: QuantConfig, dtype: torch.dtype) -> None:
    """Replace the linear layers `config` quantizes (call under `torch.device("meta")`)."""
    if config.weights is not None:
        for parent_name, parent in list(model.named_modules()):
            for child_name, child in list(parent.named_children()):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                if isinstance(child, nn.Linear) and name != _LM_HEAD and _quantized(config, name):
                    setattr(parent, child_name, quantized_linear(child, config.weights, dtype))
    if config.kv_cache is not None and config.kv_cache.static:
        for module in _attention_layers(model):
            module.register_buffer("k_scale", torch.ones(1, dtype=torch.float32))
            module.register_buffer("v_scale", torch.ones(1, dtype=torch.float32))


def _quantized(config: QuantConfig, name: str) -> bool:
    """Whether our (possibly fused) layer is quantized in the checkpoint; fused shards must agree."""
    parent, _, leaf = name.rpartition(".")
    names = [f"{parent}.{shard}" for shard in _UNFUSED[leaf]] if leaf in _UNFUSED else [name]
    decisions = {config.quantizes(n) for n in names}
    if len(decisions) > 1:
        raise InvalidArgument(f"the checkpoint quantizes only some of {names}, which the worker fuses")
    return decisions.pop()


def _attention_layers(model: nn.Module) -> list[nn.Module]:
    return [layer.self_attn for layer in model.model.layers]


def kv_scales(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The static (k_scale, v_scale) of every layer, if the model has them."""
    layers = _attention_layers(model)
    if not hasattr(layers[0], "k_scale"):
        return None
    return [(layer.k_scale, layer.v_scale) for layer in layers]


def init_dummy_quantized(model: nn.Module, seed: int) -> None:
    """Random codes and plausible scales for every quantized layer (load_format dummy)."""
    layers = [module for module in model.modules() if isinstance(module, QuantizedLinear)]
    if layers:
        generator = torch.Generator(layers[0].qweight.device).manual_seed(seed)
        for layer in layers:
            layer.init_dummy(generator)


class QuantizedCheckpoint:
    def __init__(self, model: nn.Module, config: QuantConfig) -> None:
        self.model = model
        self.config = config
        self.scheme = config.weights
        self.modules = dict(model.named_modules())
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        self._installed: set[str] = set()
        self._kv_loaded: set[str] = set()

    def route(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """Consume quantized layers' tensors and KV scales; yield the rest to `load_weights`."""
        for name, tensor in weights:
            module, _, suffix = name.rpartition(".")
            if self._kv_scale(name, tensor):
                continue
            if suffix == "bias" or not self._is_quantized_checkpoint_layer(module):
                yield name, tensor
                continue
            if module in self._installed:
                if suffix in formats.OPTIONAL_TENSORS:
                    continue
                raise InvalidArgument(f"checkpoint tensor {name} comes after its layer was already complete")
            pending = self._pending.setdefault(module, {})
            pending[suffix] = tensor
            if formats.required_tensors(self.scheme, pending) <= pending.keys():
                dense = self._install(module, self._pending.pop(module))
                self._installed.add(module)
                if dense is not None:
                    yield f"{module}.weight", dense
        self._finish()

    def _is_quantized_checkpoint_layer(self, module: str) -> bool:
        if self.scheme is None:
            return False
        if module == _LM_HEAD:
            return self.config.quantizes(_LM_HEAD)
        return isinstance(self.modules.get(self._target(module)[0]), QuantizedLinear)

    def _target(self, module: str) -> tuple[str, int]:
        """(our module, shard index) of a checkpoint layer."""
        parent, _, leaf = module.rpartition(".")
        if leaf in _FUSED:
            fused, shard = _FUSED[leaf]
            return f"{parent}.{fused}", shard
        return module, 0

    def _install(self, module: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Put one checkpoint layer in place; for the LM head, return its dequantized weight instead."""
        if module == _LM_HEAD:
            head = self.modules[_LM_HEAD]
            return _dequantized(self.scheme, tensors, head.out_features, head.in_features)
        target, shard = self._target(module)
        layer = self.modules[target]
        parent = self.modules[target.rpartition(".")[0]]
        sizes = parent.shard_sizes() if target.rpartition(".")[2] in _UNFUSED else (layer.out_features,)
        offset, rows = sum(sizes[:shard]), sizes[shard]
        converted = formats.convert(self.scheme, tensors, rows, layer.in_features)
        device = layer.qweight.device
        layer.load_shard(offset, {k: v.to(device) for k, v in converted.items()})
        return None

    def _kv_scale(self, name: str, tensor: torch.Tensor) -> bool:
        for suffix, attribute in _KV_SCALE_NAMES.items():
            if name.endswith(f".{suffix}"):
                layer = self.modules[name[: -len(suffix) - 1]].self_attn
                if hasattr(layer, attribute):
                    getattr(layer, attribute).copy_(tensor.float().reshape(1))
                    self._kv_loaded.add(f"{name[: -len(suffix) - 1]}.{attribute}")
                return True
        return False

    def _finish(self) -> None:
        if self._pending:
            module, tensors = next(iter(self._pending.items()))
            missing = formats.required_tensors(self.scheme, tensors) - tensors.keys()
            raise InvalidArgument(
                f"checkpoint layer {module} is incomplete: it lacks {sorted(missing)} "
                f"({len(self._pending)} layers incomplete)"
            )
        missing = []
        for name, module in self.modules.items():
            if isinstance(module, QuantizedLinear):
                leaf = name.rpartition(".")[2]
                expected = len(_UNFUSED.get(leaf, [leaf]))
                if len(module.loaded) != expected:
                    missing.append(name)
                module.finish_loading()
        if missing:
            raise InvalidArgument(
                f"checkpoint is missing quantized weights of {len(missing)} layers, e.g. {missing[:3]}"
            )
        layers = _attention_layers(self.model)
        if hasattr(layers[0], "k_scale") and len(self._kv_loaded) != 2 * len(layers):
            raise InvalidArgument(
                "the checkpoint declares static KV-cache scales but lacks k_scale/v_scale for "
                f"{2 * len(layers) - len(self._kv_loaded)} of {2 * len(layers)} layer caches"
            )


def _dequantized(
    scheme: WeightScheme, tensors: dict[str, torch.Tensor], rows: int, in_features: int
) -> torch.Tensor:
    if scheme.act_order:
        raise InvalidArgument("an act-order quantized LM head is not supported")
    converted = formats.convert(scheme, tensors, rows, in_features)
    if scheme.method != WEIGHT_ONLY:
        return converted["qweight"].float() * converted["weight_scale"][:, None]
    return dequantize_weight(
        converted["qweight"], converted["scales"], converted.get("zeros"), scheme.bits,
        scheme.group_size or in_features,
    )  # fmt: skip
