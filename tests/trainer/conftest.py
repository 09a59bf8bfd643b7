"""Trainer fixtures: a real registry and a real trainer on loopback, sharing one session.

The registry holds the tiny model as `tiny@1`; the trainer runs jobs as child
processes (the local runner), two at a time, polling its store quickly so
tests do not wait on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopback import ServiceThread, registry_on_loopback
from trainer_harness import TrainerFactory, chat_records, preference_records, text_records, write_jsonl

from cairn.jobs.config import JobsConfig
from cairn.services.registry.client import RegistryClient
from cairn.services.trainer.client import TrainerClient
from cairn.services.trainer.config import TrainerConfig
from cairn.services.trainer.server import trainer_services


@pytest.fixture(scope="session")
def registry_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    service = registry_on_loopback(tmp_path_factory.mktemp("registry"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def registry(registry_service: ServiceThread) -> Iterator[RegistryClient]:
    with RegistryClient(registry_service.address) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_ref(registry: RegistryClient, tiny_model_dir: Path) -> str:
    return registry.push_dir(tiny_model_dir, "tiny", aliases=["base"]).ref


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_jsonl(root / "chat.jsonl", chat_records())
    write_jsonl(root / "pairs.jsonl", preference_records())
    write_jsonl(root / "text.jsonl", text_records())
    lines = [json.dumps(r) for r in chat_records()]
    lines[2] = lines[2][:-5]
    (root / "broken.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def trainer_factory(
    registry_service: ServiceThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrainerFactory]:
    """`make(root=None, **jobs_options)`: a trainer service on `root` (a fresh one by default)."""
    started: list[ServiceThread] = []
    cache = tmp_path_factory.mktemp("model-cache")

    def make(root: Path | None = None, **jobs: object) -> ServiceThread:
        options = {"max_concurrent": 2, "poll_interval_s": 0.05, "liveness_interval_s": 0.2, **jobs}
        config = TrainerConfig(
            root=root or tmp_path_factory.mktemp("trainer"),
            registry=registry_service.address,
            cache_dir=cache,
            port=0,
            metrics_port=0,
            log_level="WARNING",
            jobs=JobsConfig(**options),
        )
        service = ServiceThread(config, trainer_services)
        started.append(service)
        return service

    yield make
    for service in started:
        if service.loop.loop.is_running():
            service.stop()


@pytest.fixture(scope="session")
def trainer_service(trainer_factory: TrainerFactory) -> ServiceThread:
    return trainer_factory()


@pytest.fixture(scope="session")
def trainer(trainer_service: ServiceThread) -> Iterator[TrainerClient]:
    with TrainerClient(trainer_service.address) as client:
        yield client
