"""Quantizer fixtures: the tiny model, calibration text, and artifacts built once per session.

`artifact(quant_type, **spec_fields)` quantizes the tiny model in-process on
the CPU (small calibration and evaluation sets) and returns the run's
`Outcome`; equal arguments share one run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from quant_harness import spec

from cairn.services.quantizer.plan import plan_from_spec
from cairn.services.quantizer.quantize import Outcome, quantize

CALIBRATION = {"num_samples": 8, "seq_len": 64}
EVALUATION = {"num_samples": 4, "seq_len": 64}

ArtifactFactory = Callable[..., Outcome]


@pytest.fixture(scope="session")
def source(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cairn.tiny.corpus import corpus_samples

    path = tmp_path_factory.mktemp("data") / "calibration.jsonl"
    path.write_text("\n".join(json.dumps({"text": text}) for text in corpus_samples(160, seed=3)) + "\n")
    return path


@pytest.fixture(scope="session")
def artifact(
    source: Path, calibration_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> ArtifactFactory:
    built: dict[str, Outcome] = {}

    def make(quant_type: str, **fields: Any) -> Outcome:
        fields = {
            "calibration": {"dataset_uri": str(calibration_file), **CALIBRATION},
            "eval": EVALUATION,
            **fields,
        }
        key = json.dumps([quant_type, fields], sort_keys=True)
        if key not in built:
            plan = plan_from_spec(spec(str(source), quant_type, **fields))
            out = tmp_path_factory.mktemp(quant_type) / "artifact"
            built[key] = quantize(
                plan, source, out, fetch=Path, device=torch.device("cpu"),
                report=lambda *_: None, lineage={"source": str(source)},
            )  # fmt: skip
        return built[key]

    return make
