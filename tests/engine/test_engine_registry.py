"""A registry reference as the model: pushed to a loopback registry, pulled once into the worker's cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from engine_helpers import greedy, make_runner, prompts
from loopback import registry_on_loopback

from cairn.services.registry.client import RegistryClient
from cairn.services.worker.driver import Driver
from cairn.services.worker.loader import resolve_model_path


@pytest.fixture
def registry_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A registry server (SQLite, local blobs) on its own event-loop thread; $CAIRN_REGISTRY points at it."""
    registry = registry_on_loopback(tmp_path / "registry")
    monkeypatch.setenv("CAIRN_REGISTRY", registry.address)
    try:
        yield registry.address
    finally:
        registry.stop()


def test_registry_reference_loads_the_pushed_checkpoint(
    checkpoint, registry_address: str, tmp_path: Path
) -> None:
    source = checkpoint("qwen2").path
    with RegistryClient(registry_address) as client:
        client.push_dir(source, "acme/tiny-qwen", aliases=["production"])
    cache = tmp_path / "cache"
    pulled = resolve_model_path("acme/tiny-qwen@production", cache)
    assert pulled.is_relative_to(cache)
    assert (pulled / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    runner = make_runner("acme/tiny-qwen@production", model_cache_dir=cache)
    local = make_runner(source)
    batch = prompts(seed=40, lengths=(9, 14))
    assert Driver(runner).generate(batch, greedy(max_tokens=6)) == Driver(local).generate(
        batch, greedy(max_tokens=6)
    )
    torch.testing.assert_close(runner.model.lm_head.weight, local.model.lm_head.weight, atol=0, rtol=0)
