"""The worker's LoRA adapters: projections wrapped once at model load, adapters loaded live into slots.

`LoRAAdapters.wrap` replaces every decoder layer's qkv_proj, o_proj,
gate_up_proj and down_proj with a `LoRALinear` holding `max_loras` zeroed
slots of rank `max_lora_rank`. `load` reads a PEFT directory, checks it
against the served model (the hard check is every tensor's shape; a
different base_model_name_or_path alone is only logged), picks a slot
(`AdapterPool`: a free one, else the least recently used that no sequence
holds) and writes the adapter into every wrapped layer; projections the
adapter does not target stay zero, so they add nothing. Nothing is evicted
until the new adapter has been read and checked.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from cairn.common.errors import InvalidArgument
from cairn.services.worker.lora.layer import LoRALinear, LoRAMapping, LoRAState
from cairn.services.worker.lora.peft import AdapterWeights, read_adapter
from cairn.services.worker.lora.pool import AdapterPool, LoadedAdapter

log = logging.getLogger(__name__)

# checkpoint projection -> (sublayer, our module, slice index within it)
_TARGETS = {
    "q_proj": ("self_attn", "qkv_proj", 0),
    "k_proj": ("self_attn", "qkv_proj", 1),
    "v_proj": ("self_attn", "qkv_proj", 2),
    "o_proj": ("self_attn", "o_proj", 0),
    "gate_proj": ("mlp", "gate_up_proj", 0),
    "up_proj": ("mlp", "gate_up_proj", 1),
    "down_proj": ("mlp", "down_proj", 0),
}
_FUSED = ("qkv_proj", "gate_up_proj")


class LoRAAdapters:
    def __init__(self, model: nn.Module, max_loras: int, max_lora_rank: int, served_model: str = "") -> None:
        if max_loras < 1 or max_lora_rank < 1:
            raise InvalidArgument(
                f"max_loras and max_lora_rank must be >= 1, got {max_loras} and {max_lora_rank}"
            )
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.served_model = served_model
        self.state = LoRAState()
        self.pool = AdapterPool(max_loras)
        self.layers = self._wrap(model)

    def _wrap(self, model: nn.Module) -> dict[tuple[int, str], LoRALinear]:
        weight = next(model.parameters())
        layers = {}
        for index, decoder in enumerate(model.model.layers):
            for sublayer_name, name in dict.fromkeys((s, m) for s, m, _ in _TARGETS.values()):
                sublayer = getattr(decoder, sublayer_name)
                base = getattr(sublayer, name)
                sizes = sublayer.shard_sizes() if name in _FUSED else (base.out_features,)
                wrapped = LoRALinear(
                    base, sizes, self.max_loras, self.max_lora_rank, self.state, weight.dtype, weight.device
                )
                setattr(sublayer, name, wrapped)
                layers[(index, name)] = wrapped
        return layers

    @property
    def adapters(self) -> list[LoadedAdapter]:
        return self.pool.adapters

    def load(self, name: str, directory: Path, held: set[int], source: str | None = None) -> LoadedAdapter:
        """Reads, checks and installs the adapter; `held` are the slots live sequences use."""
        if not name:
            raise InvalidArgument("an adapter needs a name")
        weights = read_adapter(directory)
        self._check(name, weights)
        slot, evicted = self.pool.slot_for(name, held)
        if evicted is not None and evicted.name != name:
            log.info("evicting adapter %s from slot %d for %s", evicted.name, slot, name)
        self._install(slot, weights)
        adapter = LoadedAdapter(
            name=name,
            source=source or str(directory),
            rank=weights.rank,
            target_modules=weights.target_modules,
            base_model=weights.base_model,
            slot=slot,
        )
        self.pool.put(adapter)
        log.info("loaded adapter %s (rank %d, %s) into slot %d", name, adapter.rank, adapter.source, slot)
        return adapter

    def unload(self, name: str, held: set[int]) -> bool:
        adapter = self.pool.remove(name, held)
        if adapter is None:
            return False
        for layer in self.layers.values():
            layer.clear(adapter.slot)
        return True

    def slot(self, name: str) -> int:
        """The slot of a resident adapter (NotFound otherwise); -1 for the base model ("")."""
        return self.pool.get(name).slot if name else -1

    def set_mapping(self, mapping: LoRAMapping | None) -> None:
        self.state.mapping = mapping

    def _check(self, name: str, weights: AdapterWeights) -> None:
        if weights.rank > self.max_lora_rank:
            raise InvalidArgument(
                f"adapter {name!r} has rank {weights.rank}, above this worker's max_lora_rank "
                f"{self.max_lora_rank}"
            )
        num_layers = len({layer for layer, _ in self.layers})
        for (layer, projection), (a, b) in weights.weights.items():
            _, module, index = _TARGETS[projection]
            if layer >= num_layers:
                raise InvalidArgument(
                    f"adapter {name!r} targets layer {layer}, but the served model has {num_layers} layers "
                    f"(trained on a different base model?)"
                )
            target = self.layers[(layer, module)]
            expected_a, expected_b = (a.shape[0], target.in_features), (target.slice_size(index), b.shape[1])
            if tuple(a.shape) != expected_a or tuple(b.shape) != expected_b:
                raise InvalidArgument(
                    f"adapter {name!r}: layer {layer} {projection} has A {tuple(a.shape)} and B "
                    f"{tuple(b.shape)}, the served model needs A {expected_a} and B {expected_b} "
                    f"(trained on a different base model?)"
                )
        base = weights.base_model
        if (
            base
            and self.served_model
            and base != self.served_model
            and Path(base).name != Path(self.served_model).name
        ):
            log.warning(
                "adapter %s was trained on %s, the worker serves %s; the shapes fit, loading it anyway",
                name,
                base,
                self.served_model,
            )

    def _install(self, slot: int, weights: AdapterWeights) -> None:
        for layer in self.layers.values():
            layer.clear(slot)
        for (layer, projection), (a, b) in weights.weights.items():
            _, module, index = _TARGETS[projection]
            self.layers[(layer, module)].set_slice(slot, index, a, b)
