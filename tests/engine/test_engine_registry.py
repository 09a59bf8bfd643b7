"""A registry reference as the model: pushed to a loopback registry, pulled once into the worker's cache."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from engine_helpers import greedy, make_runner, prompts

from cairn.common.server import start_server
from cairn.services.registry.client import RegistryClient
from cairn.services.registry.config import RegistryConfig
from cairn.services.registry.server import registry_services
from cairn.services.worker.driver import Driver
from cairn.services.worker.loader import resolve_model_path


@pytest.fixture
def registry_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A registry server (SQLite, local blobs) on its own event-loop thread; $CAIRN_REGISTRY points at it."""
    config = RegistryConfig(root=tmp_path / "registry", port=0, metrics_port=0, log_level="WARNING")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    services = registry_services(config)
    running = call(_start(services, config))
    address = f"127.0.0.1:{running.port}"
    monkeypatch.setenv("CAIRN_REGISTRY", address)
    try:
        yield address
    finally:
        call(running.stop(None))
        call(services.__aexit__(None, None, None))
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _start(services, config: RegistryConfig):
    return await start_server(config, await services.__aenter__())


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
