"""Router fixtures: the real serving stack, session-scoped.

- `tokenizer_service`: the tokenizer service on the tiny model's directory;
- `scheduler`: deployment "tiny", a scheduler service with one Ray worker
  actor (2048-token context: room for requests that are still running when
  a test disconnects or overloads);
- `short_pair`: deployment "tiny-short", two scheduler replicas with in-process
  workers and a 128-token context (affinity across replicas, fuzzing);
- `router`: a router over both deployments, no keys; tests needing other
  settings start their own router against the same backends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from loopback import LoopThread, Served
from router_harness import CONTEXT, SHORT_CONTEXT, InProcessScheduler, Router, scheduler_config, start_router

from cairn.services.scheduler.server import scheduler_services
from cairn.services.tokenizer.config import TokenizerConfig
from cairn.services.tokenizer.server import tokenizer_services
from cairn.v1 import inference_pb2_grpc


@pytest.fixture(scope="session")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def tokenizer_service(
    loop: LoopThread, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    config = TokenizerConfig(
        port=0,
        metrics_port=0,
        log_level="WARNING",
        registry_address="",
        cache_dir=tmp_path_factory.mktemp("router-tokenizer-cache"),
        preload=[str(tiny_model_dir)],
        threads=2,
    )
    served = Served(loop, config, tokenizer_services)
    yield served
    served.stop()
    # The tokenizer server froze the session's objects out of the cyclic GC; other suites need it back.
    gc.unfreeze()


@pytest.fixture(scope="session")
def scheduler(loop: LoopThread, ray_local: Any, tiny_model_dir: Path) -> Iterator[Served]:
    served = Served(loop, scheduler_config(tiny_model_dir, "tiny", CONTEXT), scheduler_services)
    yield served
    served.stop()


@pytest.fixture(scope="session")
def short_pair(loop: LoopThread, tiny_model_dir: Path) -> Iterator[list[InProcessScheduler]]:
    config = scheduler_config(tiny_model_dir, "tiny-short", SHORT_CONTEXT, num_blocks=256)
    pair = [InProcessScheduler(loop, config), InProcessScheduler(loop, config)]
    yield pair
    for scheduler in pair:
        scheduler.stop()


@pytest.fixture(scope="session")
def backends(
    tokenizer_service: Served, scheduler: Served, short_pair: list[InProcessScheduler]
) -> dict[str, Any]:
    """Settings that point a router at the session's tokenizer and schedulers."""
    return {
        "tokenizer_address": tokenizer_service.address,
        "deployments": {"tiny": [scheduler.address], "tiny-short": [s.address for s in short_pair]},
    }


@pytest.fixture(scope="session")
def router(loop: LoopThread, backends: dict[str, Any]) -> Iterator[Router]:
    served = start_router(loop, **backends)
    yield served
    served.stop()


@pytest.fixture(scope="session")
def stub(router: Router) -> Iterator[inference_pb2_grpc.InferenceStub]:
    with grpc.insecure_channel(router.address) as channel:
        yield inference_pb2_grpc.InferenceStub(channel)


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> Iterator[Any]:
    """The in-process engine (offline LLM) on the same model: the greedy oracle."""
    from cairn.services.scheduler.offline import LLM

    llm = LLM(
        str(tiny_model_dir),
        device="cpu",
        dtype="float32",
        block_size=16,
        max_model_len=CONTEXT,
        num_blocks=256,
    )
    yield llm
    llm.close()
