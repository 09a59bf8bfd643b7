"""Scheduler service fixtures: the test event loop and the greedy-token oracle.

The oracle is the worker itself: an in-process ModelRunner generating each
request alone (no batching, no scheduler), built once per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from loopback import LoopThread
from scheduler_service_harness import BLOCK_SIZE, MAX_MODEL_LEN, Reference, Spec

from cairn.services.worker.driver import Driver
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """In-process workers and the oracle share the cores with the worker actors: one
    intra-op thread each keeps them from spinning against each other (several times
    faster on a small machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def reference(tiny_model_dir: Path) -> Reference:
    """`reference(specs)`: each spec's greedy tokens from the worker running it alone,
    cut after the first EOS as the scheduler stops there."""
    runner = ModelRunner(
        EngineConfig(
            model=str(tiny_model_dir),
            device="cpu",
            dtype="float32",
            block_size=BLOCK_SIZE,
            num_blocks=128,
            max_num_seqs=1,
            max_model_len=MAX_MODEL_LEN,
        )
    )
    runner.load()
    runner.profile_and_allocate_kv_cache()
    driver = Driver(runner)
    eos = set(runner.model_config.eos_token_ids)
    cache: dict[tuple[tuple[int, ...], int], list[int]] = {}

    def generate(specs: list[Spec]) -> list[list[int]]:
        results = []
        for spec in specs:
            key = (tuple(spec.prompt), spec.max_tokens)
            if key not in cache:
                params = SamplingParams(temperature=0.0, max_tokens=spec.max_tokens)
                tokens = driver.generate([spec.prompt], params)[0]
                end = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
                cache[key] = tokens[:end]
            results.append(cache[key])
        return results

    return generate
