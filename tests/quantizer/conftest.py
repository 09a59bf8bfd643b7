"""Quantizer fixtures: the tiny model, calibration text, and artifacts built once per session.

`artifact(quant_type, **spec_fields)` quantizes the tiny model in-process on
the CPU (small calibration and evaluation sets) and returns the run's
`Outcome`; equal arguments share one run. A registry and a quantizer serve on
loopback for the service and CLI tests, the quantizer running its jobs as
real child processes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from loopback import ServiceThread, registry_on_loopback
from quant_harness import CALIBRATION, EVALUATION, spec

from cairn.services.quantizer.plan import plan_from_spec
from cairn.services.quantizer.quantize import Outcome, quantize

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


@pytest.fixture(scope="session")
def registry_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    service = registry_on_loopback(tmp_path_factory.mktemp("registry"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def registry(registry_service: ServiceThread) -> Iterator[Any]:
    from cairn.services.registry.client import RegistryClient

    with RegistryClient(registry_service.address) as client:
        yield client


@pytest.fixture(scope="session")
def source_ref(registry: Any, source: Path) -> str:
    """The tiny model in the registry, pinned: tiny@1 (alias "base")."""
    return registry.push_dir(source, "tiny", aliases=["base"]).ref


@pytest.fixture(scope="session")
def quantizer_service(
    registry_service: ServiceThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceThread]:
    """The quantizer on loopback, running jobs as child processes (local runner), two at once, on the CPU."""
    from cairn.jobs.config import JobsConfig
    from cairn.services.quantizer.config import QuantizerConfig
    from cairn.services.quantizer.server import quantizer_services

    config = QuantizerConfig(
        root=tmp_path_factory.mktemp("quantizer"),
        registry=registry_service.address,
        cache_dir=tmp_path_factory.mktemp("model-cache"),
        device="cpu",
        port=0,
        metrics_port=0,
        log_level="WARNING",
        jobs=JobsConfig(max_concurrent=2, poll_interval_s=0.05, liveness_interval_s=0.2, cancel_grace_s=2),
    )
    service = ServiceThread(config, quantizer_services)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def quantizer(quantizer_service: ServiceThread) -> Iterator[Any]:
    from cairn.services.quantizer.client import QuantizerClient

    with QuantizerClient(quantizer_service.address) as client:
        yield client


@pytest.fixture(scope="session")
def submitted(quantizer: Any, source_ref: str, calibration_file: Path) -> dict[str, Any]:
    """Jobs submitted once for the session and left to run side by side, each watched from the moment
    it is submitted (`events[name]()` waits for the watch to end): a GPTQ job with static KV scales
    published as acme/tiny-gptq, and one that fails on the model (a group size that divides nothing)."""
    calibration = {"dataset_uri": str(calibration_file), **CALIBRATION}
    jobs = {
        "gptq": quantizer.submit(
            spec(
                "tiny@base",
                "gptq",
                group_size=32,
                act_order=True,
                calibration=calibration,
                eval=EVALUATION,
                kv_cache={"dtype": "int8", "static_scales": True},
                output_name="acme/tiny-gptq",
                aliases=["candidate"],
            )
        ),
        "bad": quantizer.submit(spec(source_ref, "weight_only_int4", group_size=48, eval=EVALUATION)),
    }
    pool = ThreadPoolExecutor(max_workers=len(jobs))
    watches = {
        name: pool.submit(lambda i=job.id: list(quantizer.watch(i, include_logs=True)))
        for name, job in jobs.items()
    }
    return {
        **jobs,
        "events": {name: functools.partial(future.result, 300) for name, future in watches.items()},
    }
