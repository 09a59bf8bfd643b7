"""The session's PEFT adapters of the tiny model and their HF oracles."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lora_helpers import ADAPTERS, make_adapter


@pytest.fixture(scope="session")
def peft_adapters(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Any]]:
    """name -> (adapter directory, the PEFT model that applies it). Read-only: see adapter_copy."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: (root / name, make_adapter(tiny_model_dir, root / name, seed, **lora))
        for seed, (name, lora) in enumerate(ADAPTERS.items(), start=1)
    }


@pytest.fixture(scope="session")
def hf_base(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture
def adapter_copy(peft_adapters: dict[str, tuple[Path, Any]], tmp_path: Path) -> Callable[[str], Path]:
    """`adapter_copy(name)`: a private copy of an adapter's directory, free to change."""

    def copy_of(name: str) -> Path:
        return Path(shutil.copytree(peft_adapters[name][0], tmp_path / name))

    return copy_of
