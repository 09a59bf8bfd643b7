"""Concurrent writers (threads, server replicas, processes) get consistent, distinct results."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from registry_content import ready
from registry_harness import RegistryServer

from cairn.common.errors import AlreadyExists, CairnError, FailedPrecondition
from cairn.services.registry.client import RegistryClient
from cairn.services.registry.config import RegistryConfig
from cairn.services.registry.core import Registry
from cairn.services.registry.records import VersionState
from cairn.services.registry.server import open_registry

WRITERS = 6


def together(n: int, fn: Callable[[int], object]) -> list[object]:
    """Run fn(0..n-1) on n threads released at the same moment; results (or raised errors) in order."""
    barrier = threading.Barrier(n)

    def run(i: int) -> object:
        barrier.wait()
        try:
            return fn(i)
        except CairnError as e:
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_concurrent_pushes_of_one_new_name_all_finalize(
    client: RegistryClient, name: str, make_dir: Callable[..., Path], tmp_path: Path
) -> None:
    dirs = [
        make_dir({"config.json": b'{"writer": %d}' % i, "w.bin": os.urandom(70_000)}) for i in range(WRITERS)
    ]
    versions = together(WRITERS, lambda i: client.push_dir(dirs[i], name, max_workers=2))
    assert sorted(v.number for v in versions) == list(range(1, WRITERS + 1))  # type: ignore[union-attr]
    assert all(v.state is VersionState.READY for v in versions)  # type: ignore[union-attr]
    for i, version in enumerate(versions):
        out = client.pull(version.ref, tmp_path / f"out{i}")  # type: ignore[union-attr]
        assert out.digest == version.digest  # type: ignore[union-attr]
        assert (tmp_path / f"out{i}" / "config.json").read_bytes() == b'{"writer": %d}' % i
    assert client.get_model(name).latest_version == WRITERS


def test_replicas_on_one_database_number_versions_without_collisions(
    replica: Registry, registry_config: RegistryConfig, name: str
) -> None:
    other = open_registry(registry_config)
    try:
        registries = [replica, other] * (WRITERS // 2)
        drafts = together(
            WRITERS * 2,
            lambda i: registries[i % WRITERS].create_version(name, format="hf-model", create_model=True),
        )
    finally:
        other.close()
    assert sorted(d.number for d in drafts) == list(range(1, WRITERS * 2 + 1))  # type: ignore[union-attr]


def test_concurrent_create_model_has_exactly_one_winner(client: RegistryClient, name: str) -> None:
    results = together(WRITERS, lambda i: client.create_model(name, description=f"writer {i}"))
    winners = [r for r in results if not isinstance(r, CairnError)]
    assert len(winners) == 1
    assert all(isinstance(r, AlreadyExists) for r in results if r not in winners)
    assert client.get_model(name).description == winners[0].description  # type: ignore[union-attr]


def test_alias_and_delete_racing_never_leave_an_alias_on_a_deleted_version(
    client: RegistryClient, prefix: str
) -> None:
    for round_ in range(4):
        name = f"{prefix}/race{round_}"
        ready(client, name, b"1")
        ready(client, name, b"2")
        outcomes = together(
            2,
            lambda i, name=name: (
                client.set_alias(name, "production", 1) if i == 0 else client.delete(f"{name}@1")
            ),
        )
        failures = [o for o in outcomes if isinstance(o, CairnError)]
        assert len(failures) == 1 and isinstance(failures[0], FailedPrecondition)
        model = client.get_model(name)
        for alias in model.aliases:
            assert client.resolve(f"{name}@{alias.version}").state is VersionState.READY


def test_pushes_from_separate_processes(
    registry_server: RegistryServer, name: str, make_dir: Callable[..., Path], client: RegistryClient
) -> None:
    dirs = [make_dir({"config.json": b'{"process": %d}' % i}) for i in range(3)]
    env = {**os.environ, "CAIRN_REGISTRY": registry_server.address}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "cairn.cli", "registry", "push", str(d), "--name", name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in dirs
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    assert sorted(out.split()[1] for out, _ in outputs) == [f"{name}@{n}" for n in (1, 2, 3)]
    contents = {client.resolve(f"{name}@{n}").artifacts[0].sha256 for n in (1, 2, 3)}
    assert len(contents) == 3
