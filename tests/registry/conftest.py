"""Registry fixtures: every server-backed test runs once on SQLite and once on a real PostgreSQL.

One registry server per backend serves the whole session; each test works on
model names of its own (`name`, `prefix`), so tests stay independent without
paying for a fresh database each.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from registry_harness import PG_MISSING, PostgresCluster, RegistryServer, create_database, find_pg_bindir

from cairn.services.registry.client import RegistryClient
from cairn.services.registry.config import RegistryConfig
from cairn.services.registry.core import Registry
from cairn.services.registry.server import open_registry
from cairn.v1 import registry_pb2_grpc

# Small chunks so even the tiny test files cross several messages in both directions.
CHUNK = 64 * 1024

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server for the session: $CAIRN_TEST_PG_URL, else a throwaway local cluster."""
    if os.environ.get("CAIRN_TEST_PG_URL"):
        yield os.environ["CAIRN_TEST_PG_URL"]
        return
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.fail(PG_MISSING, pytrace=False)
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster.url()
    finally:
        cluster.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'registry.db'}"
    return create_database(request.getfixturevalue("postgres_server_url"))


@pytest.fixture(scope="session")
def registry_config(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> RegistryConfig:
    return RegistryConfig(
        root=tmp_path_factory.mktemp("registry-root"),
        database_url=database_url,
        port=0,
        metrics_port=0,
        chunk_size=CHUNK,
        log_level="WARNING",
    )


@pytest.fixture(scope="session")
def registry_server(registry_config: RegistryConfig) -> Iterator[RegistryServer]:
    server = RegistryServer(registry_config)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(registry_server: RegistryServer) -> Iterator[RegistryClient]:
    with RegistryClient(registry_server.address, chunk_size=CHUNK) as c:
        yield c


@pytest.fixture(scope="session")
def stub(registry_server: RegistryServer) -> Iterator[registry_pb2_grpc.RegistryStub]:
    """The raw generated stub, for requests the client library would never send."""
    with grpc.insecure_channel(registry_server.address) as channel:
        yield registry_pb2_grpc.RegistryStub(channel)


@pytest.fixture(scope="session")
def replica(registry_config: RegistryConfig) -> Iterator[Registry]:
    """A second registry on the same database and blob store: what another server replica would see."""
    registry = open_registry(registry_config)
    yield registry
    registry.close()


@pytest.fixture
def prefix() -> str:
    """A namespace no other test uses; list calls filter on it."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def name(prefix: str) -> str:
    return f"{prefix}/model"


@pytest.fixture
def make_dir(tmp_path: Path) -> Callable[..., Path]:
    """`make_dir({"a.bin": b"...", "sub/b.txt": b"..."})` writes those files under a fresh directory."""

    def make(files: dict[str, bytes]) -> Path:
        root = tmp_path / uuid.uuid4().hex[:8]
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return root

    return make


@pytest.fixture
def small_dir(make_dir: Callable[..., Path]) -> Path:
    """A model-like directory with content unique to the test (so blobs are never shared by accident)."""
    salt = uuid.uuid4().bytes
    return make_dir(
        {
            "config.json": b'{"model_type": "llama", "salt": "%s"}' % salt.hex().encode(),
            "model.safetensors": os.urandom(200_000),
            "tokenizer/tokenizer.json": b'{"version": "1.0"}' + salt,
        }
    )
