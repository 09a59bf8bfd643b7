"""Finds a model directory and streams its HF safetensors checkpoint onto the device.

Parameters are allocated once, uninitialized, on the target device; the
checkpoint is then read shard by shard through safetensors' memory map and
each tensor is copied (and cast) straight into its parameter, so no second
full copy of the weights ever exists in host or device memory. A rank of a
tensor-parallel group reads only its part of each tensor (safetensors slices),
never the whole of it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from cairn.common.errors import InvalidArgument, NotFound
from cairn.services.worker.distributed import TensorParallel
from cairn.services.worker.models import MODEL_CLASSES, LlamaForCausalLM, ModelConfig
from cairn.services.worker.models.parallel import Narrow
from cairn.services.worker.quantization import QuantConfig, QuantizedCheckpoint, quantize_model

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


def resolve_model_path(ref_or_dir: str | Path, cache_dir: Path | None = None) -> Path:
    """A local directory as is; a registry reference ("name@alias", "name@3") pulled
    once into `cache_dir` (default: the registry client's cache) from the
    registry at $CAIRN_REGISTRY."""
    text = str(ref_or_dir)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if text.startswith(("/", "./", "../", "~")) or path.exists():
        raise NotFound(f"model directory {text} does not exist")
    from cairn.services.registry.client import RegistryClient

    with RegistryClient() as client:
        return client.materialize(text, cache_dir)


def checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / _INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / name for name in names]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise NotFound(f"{index} names shards that are not there: {absent}")
        return files
    if (model_dir / _SINGLE).is_file():
        return [model_dir / _SINGLE]
    raise InvalidArgument(f"{model_dir} holds no {_SINGLE} or {_INDEX} (only safetensors checkpoints load)")


def iter_checkpoint_tensors(
    files: list[Path], part_of: Callable[[str], Narrow | None] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, CPU tensor backed by the file's memory map), one shard open at a time; with
    `part_of`, only the part of each tensor it names (None: all of it) is read."""
    for file in files:
        with safe_open(file, framework="pt") as shard:
            for name in shard.keys():  # noqa: SIM118 - safe_open is not a mapping
                part = part_of(name) if part_of is not None else None
                yield name, shard.get_tensor(name) if part is None else read_part(shard, name, part)


def read_part(shard: Any, name: str, part: Narrow) -> torch.Tensor:
    """`part` of tensor `name` in the open safetensors `shard`, zero-padded past its end."""
    tensor_slice = shard.get_slice(name)
    shape = tensor_slice.get_shape()
    if len(shape) <= part.dim or shape[part.dim] != part.full:
        raise InvalidArgument(
            f"checkpoint tensor {name} has shape {tuple(shape)}, expected {part.full} along dim {part.dim}"
        )
    end = min(part.start + part.length, part.full)
    tensor = tensor_slice[(slice(None),) * part.dim + (slice(part.start, end),)]
    missing = part.length - tensor.shape[part.dim]
    if missing:
        padding = list(tensor.shape)
        padding[part.dim] = missing
        tensor = torch.cat([tensor, tensor.new_zeros(padding)], dim=part.dim)
    return tensor


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    max_position: int,
    quant: QuantConfig | None = None,
    tp: TensorParallel | None = None,
) -> LlamaForCausalLM:
    """The model (this rank's share of it, with `tp`) with uninitialized weights on `device`,
    ready for `load_weights`; with `quant`, the linear layers it covers are quantized ones."""
    if tp is not None and tp.size > 1 and quant is not None and quant.weights is not None:
        raise InvalidArgument(
            f"weight-quantized checkpoints ({quant.name}) are served on one device per replica: "
            f"tensor_parallel_size {tp.size} would need their packed weights and scales split across "
            "ranks, which the worker does not do yet; serve the unquantized checkpoint instead"
        )
    with torch.device("meta"), _default_dtype(dtype):
        model = MODEL_CLASSES[config.architecture](config, tp)
        if quant is not None:
            quantize_model(model, quant, dtype)
    model.to_empty(device=device)
    # to_empty swaps in new Parameters, which unties shared ones.
    model.tie_weights()
    model.init_rope_cache(max_position)
    return model.eval().requires_grad_(False)


def init_dummy_weights(model: LlamaForCausalLM, seed: int) -> None:
    """Random weights, N(0, 0.02) with unit norm scales: the numerics of a trained
    model are irrelevant to a benchmark, but NaNs or overflow would not be."""
    device = model.lm_head.weight.device
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)


def load_model(
    model_dir: Path,
    config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    max_position: int,
    quant: QuantConfig | None = None,
    tp: TensorParallel | None = None,
) -> LlamaForCausalLM:
    model = build_model(config, device, dtype, max_position, quant, tp)
    weights = iter_checkpoint_tensors(checkpoint_files(model_dir), model.checkpoint_part)
    if quant is not None:
        weights = QuantizedCheckpoint(model, quant).route(weights)
    with torch.no_grad():
        model.load_weights(weights)
    return model
