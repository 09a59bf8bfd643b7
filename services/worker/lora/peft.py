"""Reading a PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`).

The result is framework-free of PEFT itself: per (layer, projection) the
adapter's A [r, in] and B [out, r] with PEFT's scaling (lora_alpha / r, or
lora_alpha / sqrt(r) with rsLoRA; `rank_pattern` / `alpha_pattern` per
module, matched as PEFT matches them) already multiplied into B. Anything the
worker could not apply exactly as PEFT does (DoRA, trained biases,
`modules_to_save`, embedding or LM-head adapters, other PEFT methods) is
refused here with InvalidArgument rather than served subtly wrong.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from cairn.common.errors import InvalidArgument, NotFound

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# The checkpoint projections a worker can serve, as HF names them.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(
    r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.("
    + "|".join(PROJECTIONS)
    + r")\.lora_([AB])(?:\.[^.]+)?\.weight$"
)


@dataclass
class AdapterWeights:
    """A PEFT LoRA adapter read from disk; `weights[(layer, projection)] = (A, B * scaling)`."""

    directory: Path
    rank: int
    base_model: str
    target_modules: tuple[str, ...]
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)


def read_adapter(directory: Path) -> AdapterWeights:
    """The adapter in `directory` on the CPU in fp32. NotFound: no such directory;
    InvalidArgument: anything missing, corrupt or beyond what the worker serves."""
    if not directory.is_dir():
        raise NotFound(f"adapter directory {directory} does not exist")
    config = _read_config(directory)
    tensors = _read_tensors(directory)
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.search(key)
        if match is None:
            raise InvalidArgument(
                f"adapter {directory}: tensor {key} is not a LoRA A/B weight of a projection the worker "
                f"serves ({', '.join(PROJECTIONS)})"
            )
        layer, projection, side = int(match.group(1)), match.group(2), match.group(3)
        if tensor.dim() != 2:
            raise InvalidArgument(f"adapter {directory}: {key} has shape {tuple(tensor.shape)}, expected 2-D")
        pairs.setdefault((layer, projection), {})[side] = tensor
    if not pairs:
        raise InvalidArgument(f"adapter {directory}: {WEIGHTS_FILE} holds no LoRA weights")
    weights = {}
    for (layer, projection), sides in sorted(pairs.items()):
        if sides.keys() != {"A", "B"}:
            raise InvalidArgument(
                f"adapter {directory}: layer {layer} {projection} has lora_{next(iter(sides))} "
                "but not its other half"
            )
        a, b = sides["A"].float(), sides["B"].float()
        module = f"model.layers.{layer}.{_parent(projection)}.{projection}"
        rank, alpha = _rank_and_alpha(config, module)
        if a.shape[0] != rank or b.shape[1] != rank:
            raise InvalidArgument(
                f"adapter {directory}: {module} has A {tuple(a.shape)} and B {tuple(b.shape)}, "
                f"but its configured rank is {rank}"
            )
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        weights[(layer, projection)] = (a, b * scaling)
    return AdapterWeights(
        directory=directory,
        rank=max(a.shape[0] for a, _ in weights.values()),
        base_model=str(config.get("base_model_name_or_path") or ""),
        target_modules=tuple(sorted({p for _, p in weights}, key=PROJECTIONS.index)),
        weights=weights,
    )


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise InvalidArgument(f"{directory} is not a PEFT adapter: it has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise InvalidArgument(f"{path} must hold a JSON object")
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config['peft_type']}, only LORA adapters are served")
    if config.get("use_dora"):
        problems.append("DoRA (use_dora) is not served")
    if config.get("bias", "none") != "none":
        problems.append(f"trained biases (bias={config['bias']!r}) are not served")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} (fully trained modules) are not served")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        unsupported = sorted(set(targets) - set(PROJECTIONS))
        if unsupported:
            problems.append(f"target modules {unsupported} cannot be served (only {', '.join(PROJECTIONS)})")
    if not isinstance(config.get("r", 8), int) or config.get("r", 8) < 1:
        problems.append(f"r must be a positive integer, got {config.get('r')!r}")
    if problems:
        raise InvalidArgument(f"adapter {directory}: " + "; ".join(problems))
    return config


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        other = " (only safetensors adapters load)" if (directory / "adapter_model.bin").is_file() else ""
        raise InvalidArgument(f"adapter {directory} has no {WEIGHTS_FILE}{other}")
    try:
        with safe_open(path, framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    except (SafetensorError, OSError, ValueError) as e:
        raise InvalidArgument(f"{path} is not a readable safetensors file: {e}") from e


def _parent(projection: str) -> str:
    return "self_attn" if projection in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"


def _rank_and_alpha(config: dict, module: str) -> tuple[int, float]:
    rank = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r", 8))
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
    return int(rank), float(alpha)


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key matching the module name's tail."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default
