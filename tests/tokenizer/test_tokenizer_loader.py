"""Loading: local directories and registry references, the LRU, moving aliases, and broken models."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cairn.common.errors import FailedPrecondition, InvalidArgument, NotFound
from cairn.services.registry.client import RegistryClient
from cairn.services.tokenizer.loader import TokenizerLoader
from cairn.services.tokenizer.model_tokenizer import is_tokenizer_file


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry_loader(registry: RegistryClient, tmp_path: Path) -> Iterator[Callable[..., TokenizerLoader]]:
    """`registry_loader(**options)`: a loader on the session registry, with a client of its own."""
    loaders: list[TokenizerLoader] = []

    def make(**options: Any) -> TokenizerLoader:
        loader = TokenizerLoader(
            registry=RegistryClient(registry.target), cache_dir=tmp_path / "cache", **options
        )
        loaders.append(loader)
        return loader

    yield make
    for loader in loaders:
        loader.close()


@pytest.fixture
def loader(registry_loader: Callable[..., TokenizerLoader]) -> TokenizerLoader:
    return registry_loader()


def test_local_directory_info(model_a: Path, tmp_path: Path) -> None:
    loader = TokenizerLoader(registry=None, cache_dir=tmp_path)
    info = loader.get(str(model_a)).info()
    assert info.model == str(model_a.resolve())
    assert info.vocab_size == 2048
    assert info.bos_token_id == 0
    # <|eot_id|> from the tokenizer, then <|end_of_text|> from generation_config.json.
    assert info.eos_token_ids == (4, 1)
    assert info.special_token_ids == (0, 1, 2, 3, 4, 5)
    assert info.has_chat_template and info.supports_tools
    assert info.model_max_length == 2048


def test_registry_reference_pulls_only_tokenizer_files(
    loader: TokenizerLoader, registry: RegistryClient, model_a: Path, model_name: str, tmp_path: Path
) -> None:
    version = registry.push_dir(model_a, model_name, aliases=["production"])
    for ref in (f"{model_name}@1", model_name, f"{model_name}@latest", f"{model_name}@production"):
        tokenizer = loader.get(ref)
        assert tokenizer.name == f"{model_name}@1"
        assert tokenizer.vocab_size == 2048
    pulled = sorted(p.name for p in (tmp_path / "cache" / model_name / "1").iterdir())
    assert pulled == sorted(a.path for a in version.artifacts if is_tokenizer_file(a.path))
    assert "model.safetensors" not in pulled
    assert "tokenizer.json" in pulled


def test_moved_alias_loads_the_new_version_once_the_ttl_passes(
    registry_loader: Callable[..., TokenizerLoader],
    registry: RegistryClient,
    model_a: Path,
    model_b: Path,
    model_name: str,
) -> None:
    clock = Clock()
    loader = registry_loader(resolve_ttl_s=5.0, clock=clock)
    registry.push_dir(model_a, model_name, aliases=["production"])
    registry.push_dir(model_b, model_name)
    ref = f"{model_name}@production"
    assert loader.get(ref).vocab_size == 2048
    assert loader.get(model_name).vocab_size == 512
    registry.set_alias(model_name, "production", 2)
    clock.now = 4.0
    assert loader.get(ref).name == f"{model_name}@1"
    assert loader.peek(ref) is not None
    clock.now = 6.0
    assert loader.peek(ref) is None
    assert loader.get(ref).name == f"{model_name}@2"
    assert loader.get(ref).vocab_size == 512


def test_lru_keeps_at_most_max_cached(model_a: Path, model_b: Path, tmp_path: Path) -> None:
    loader = TokenizerLoader(registry=None, cache_dir=tmp_path, max_cached=1)
    first = loader.get(str(model_a))
    assert loader.get(str(model_a)) is first
    assert loader.loads == 1
    loader.get(str(model_b))
    assert loader.peek(str(model_a)) is None
    assert loader.get(str(model_a)) is not first
    assert loader.loads == 3


def test_concurrent_first_calls_share_one_load(model_a: Path, tmp_path: Path) -> None:
    loader = TokenizerLoader(registry=None, cache_dir=tmp_path)
    barrier = threading.Barrier(6)
    got = []

    def worker() -> None:
        barrier.wait()
        got.append(loader.get(str(model_a)))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6
    assert all(t is got[0] for t in got)
    assert loader.loads == 1


def test_changed_directory_loads_again(copy_tokenizer: Callable[[], Path], tmp_path: Path) -> None:
    loader = TokenizerLoader(registry=None, cache_dir=tmp_path)
    directory = copy_tokenizer()
    assert loader.get(str(directory)).eos_token_ids == (4, 1)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert loader.get(str(directory)).eos_token_ids == (4, 2)


def test_broken_tokenizer_files_are_failed_precondition(
    copy_tokenizer: Callable[[], Path], tmp_path: Path
) -> None:
    loader = TokenizerLoader(registry=None, cache_dir=tmp_path)
    broken = copy_tokenizer()
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NoSuchModel"')
    with pytest.raises(FailedPrecondition, match=f"cannot load the tokenizer of {broken}"):
        loader.get(str(broken))
    bad_generation = copy_tokenizer()
    (bad_generation / "generation_config.json").write_text("{not json")
    with pytest.raises(FailedPrecondition, match=r"cannot read generation_config\.json"):
        loader.get(str(bad_generation))
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    (weights_only / "config.json").write_text("{}")
    with pytest.raises(FailedPrecondition, match="has no tokenizer files"):
        loader.get(str(weights_only))


def test_registry_version_without_a_tokenizer(
    loader: TokenizerLoader, registry: RegistryClient, model_name: str, tmp_path: Path
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    registry.push_dir(adapter, model_name, format="peft-lora")
    with pytest.raises(FailedPrecondition, match=r"@1 \(peft-lora\) has no tokenizer files"):
        loader.get(f"{model_name}@1")


def test_unknown_and_malformed_references(loader: TokenizerLoader, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        loader.get(str(tmp_path / "missing"))
    with pytest.raises(NotFound):
        loader.get("no-such-model@3")
    with pytest.raises(NotFound):
        loader.get("no-such-model@production")
    with pytest.raises(InvalidArgument, match="malformed"):
        loader.get("bad name!")
    with pytest.raises(InvalidArgument, match="malformed selector"):
        loader.get("model@@1")
    with pytest.raises(InvalidArgument, match="model is required"):
        loader.get("")


def test_registry_reference_without_a_registry(tmp_path: Path) -> None:
    loader = TokenizerLoader(registry=None, cache_dir=tmp_path)
    with pytest.raises(FailedPrecondition, match="no registry configured"):
        loader.get("llama@production")


def test_local_directories_can_be_refused(model_a: Path, tmp_path: Path) -> None:
    loader = TokenizerLoader(registry=None, cache_dir=tmp_path, allow_local_dirs=False)
    with pytest.raises(InvalidArgument, match="malformed"):
        loader.get(str(model_a))
