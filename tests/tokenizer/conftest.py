"""Tokenizer fixtures: two tiny models with different tokenizers, a real registry and tokenizer server.

Everything is session-scoped: the servers run on one background event loop,
and tests work on model names of their own in the registry.
"""

from __future__ import annotations

import gc
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from loopback import LoopThread, Served, registry_on_loopback
from tokenizer_harness import SyncClient, build_byte_fallback_tokenizer

from cairn.services.registry.client import RegistryClient
from cairn.services.tokenizer.client import TokenizerClient
from cairn.services.tokenizer.config import TokenizerConfig
from cairn.services.tokenizer.core import TokenizerCore
from cairn.services.tokenizer.loader import TokenizerLoader
from cairn.services.tokenizer.model_tokenizer import is_tokenizer_file
from cairn.services.tokenizer.server import tokenizer_services
from cairn.v1 import tokenizer_pb2_grpc


@pytest.fixture(scope="session")
def model_a(tiny_model_dir: Path) -> Path:
    """The default tiny model: 2048-token byte-level BPE, Llama 3 specials and chat template."""
    return tiny_model_dir


@pytest.fixture(scope="session")
def model_b(tiny_model_factory: Callable[..., Path]) -> Path:
    """A second model whose tokenizer differs (512 tokens), for batches mixing models."""
    return tiny_model_factory(vocab_size=512)


@pytest.fixture(scope="session")
def hf_a(model_a: Path) -> Any:
    """transformers' own tokenizer for model_a: the oracle, loaded apart from the service."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_a))


@pytest.fixture(scope="session")
def byte_fallback_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama 2 style tokenizer (no model): "▁" pieces, byte fallback, first space stripped."""
    return build_byte_fallback_tokenizer(tmp_path_factory.mktemp("byte-fallback") / "tokenizer")


@pytest.fixture(scope="session")
def hf_byte_fallback(byte_fallback_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(byte_fallback_dir))


@pytest.fixture(scope="session")
def core(tmp_path_factory: pytest.TempPathFactory) -> TokenizerCore:
    """The core on local directories only (no registry)."""
    loader = TokenizerLoader(registry=None, cache_dir=tmp_path_factory.mktemp("tokenizer-cache"))
    return TokenizerCore(loader)


@pytest.fixture
def copy_tokenizer(model_a: Path, tmp_path: Path) -> Callable[[], Path]:
    """`copy_tokenizer()` is a fresh directory with model_a's tokenizer files, free to edit."""

    def copy() -> Path:
        out = tmp_path / uuid.uuid4().hex[:8]
        out.mkdir()
        for path in model_a.iterdir():
            if is_tokenizer_file(path.name):
                shutil.copy(path, out / path.name)
        return out

    return copy


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def registry_server(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = registry_on_loopback(tmp_path_factory.mktemp("registry"), loop_thread)
    yield served
    served.stop()


@pytest.fixture(scope="session")
def registry(registry_server: Served) -> Iterator[RegistryClient]:
    with RegistryClient(registry_server.address) as client:
        yield client


@pytest.fixture
def model_name() -> str:
    """A registry model name no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}/tiny"


@pytest.fixture(scope="session")
def tokenizer_server(
    loop_thread: LoopThread, registry_server: Served, model_a: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    config = TokenizerConfig(
        port=0,
        metrics_port=0,
        log_level="WARNING",
        registry_address=registry_server.address,
        cache_dir=tmp_path_factory.mktemp("tokenizer-server-cache"),
        # Every call sees where an alias points now.
        resolve_ttl_s=0,
        preload=[str(model_a)],
        threads=2,
    )
    served = Served(loop_thread, config, tokenizer_services)
    yield served
    served.stop()
    # The server froze the session's objects out of the cyclic GC; other suites need it back.
    gc.unfreeze()


@pytest.fixture(scope="session")
def client(loop_thread: LoopThread, tokenizer_server: Served) -> Iterator[SyncClient]:
    async def open_client() -> TokenizerClient:
        return TokenizerClient(tokenizer_server.address)

    tokenizer = loop_thread.run(open_client())
    yield SyncClient(loop_thread, tokenizer)
    loop_thread.run(tokenizer.close())


@pytest.fixture(scope="session")
def stub(tokenizer_server: Served) -> Iterator[tokenizer_pb2_grpc.TokenizerStub]:
    """The raw generated stub, for requests the client would never send."""
    with grpc.insecure_channel(tokenizer_server.address) as channel:
        yield tokenizer_pb2_grpc.TokenizerStub(channel)
