"""The session's saved HF checkpoints (see engine_helpers.VARIANTS)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from engine_helpers import VARIANTS, Checkpoint, build_hf_model


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Checkpoint]:
    """`checkpoint(variant)` -> the saved HF model of VARIANTS[variant], built once per session."""
    built: dict[str, Checkpoint] = {}

    def get(variant: str) -> Checkpoint:
        if variant not in built:
            model_class, config = VARIANTS[variant]
            hf = build_hf_model(model_class, config, seed=len(built))
            path = tmp_path_factory.mktemp(variant)
            hf.save_pretrained(path)
            built[variant] = Checkpoint(path, hf)
        return built[variant]

    return get
