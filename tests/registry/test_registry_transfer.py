"""Artifacts over the wire: push/pull round trips, verification, resumable and cached downloads."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY
from registry_content import sha256_of, tree
from registry_harness import free_port, wait_until

from cairn.common.errors import DataLoss, InvalidArgument, NotFound, Unavailable
from cairn.services.registry.client import MARKER, PARTIAL_SUFFIX, RegistryClient, materialize
from cairn.services.registry.config import RegistryConfig
from cairn.services.registry.core import Registry
from cairn.services.registry.records import VersionState, version_digest
from cairn.v1 import common_pb2, registry_pb2, registry_pb2_grpc


def blob_files(config: RegistryConfig) -> list[Path]:
    return [p for p in (config.root / "blobs" / "sha256").rglob("*") if p.is_file()]


def transferred() -> tuple[float, float]:
    """The registry's byte counters (the server runs in this process, on the default Prometheus registry)."""
    return (
        REGISTRY.get_sample_value("cairn_registry_uploaded_bytes_total") or 0.0,
        REGISTRY.get_sample_value("cairn_registry_downloaded_bytes_total") or 0.0,
    )


def test_tiny_model_round_trip(
    client: RegistryClient, name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    uploaded_before, downloaded_before = transferred()
    pushed = client.push_dir(tiny_model_dir, name, aliases=["production"], description="tiny llama")
    assert pushed.state is VersionState.READY
    assert pushed.number == 1
    assert pushed.aliases == ("production",)
    assert {a.path: a.sha256 for a in pushed.artifacts} == tree(tiny_model_dir)
    assert pushed.total_size == sum(p.stat().st_size for p in tiny_model_dir.rglob("*") if p.is_file())
    assert pushed.digest == version_digest(pushed.artifacts)

    pulled = client.pull(f"{name}@production", tmp_path / "pulled")
    assert pulled == pushed
    assert tree(tmp_path / "pulled") == tree(tiny_model_dir)
    assert not list((tmp_path / "pulled").rglob(f"*{PARTIAL_SUFFIX}"))
    uploaded, downloaded = transferred()
    assert (uploaded - uploaded_before, downloaded - downloaded_before) == (
        pushed.total_size,
        pushed.total_size,
    )

    assert materialize(name, tmp_path / "cache", target=client.target) == tmp_path / "cache" / name / "1"


def test_nested_paths_and_empty_files_survive(
    client: RegistryClient, name: str, make_dir: Callable[..., Path], tmp_path: Path
) -> None:
    source = make_dir({"a/b/c/deep.bin": os.urandom(150_000), "empty.txt": b"", "ü nicode.json": b"{}"})
    version = client.push_dir(source, name)
    assert [a.path for a in version.artifacts] == ["a/b/c/deep.bin", "empty.txt", "ü nicode.json"]
    client.pull(name, tmp_path / "out")
    assert tree(tmp_path / "out") == tree(source)


def test_pull_replaces_wrong_files_and_keeps_right_ones(
    client: RegistryClient, name: str, small_dir: Path, tmp_path: Path
) -> None:
    client.push_dir(small_dir, name)
    dest = tmp_path / "dest"
    client.pull(name, dest)
    (dest / "config.json").write_bytes(b"tampered")
    moved: list[int] = []
    client.pull(name, dest, progress=moved.append)
    assert tree(dest) == tree(small_dir)
    assert sum(moved) == sum(p.stat().st_size for p in small_dir.rglob("*") if p.is_file())


def test_pull_resumes_from_a_partial_file(
    client: RegistryClient, name: str, small_dir: Path, tmp_path: Path
) -> None:
    client.push_dir(small_dir, name)
    weights = (small_dir / "model.safetensors").read_bytes()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / f"model.safetensors{PARTIAL_SUFFIX}").write_bytes(weights[:123_456])
    version = client.resolve(name)
    received: list[int] = []
    client.download(
        version, version.artifact("model.safetensors"), dest / "model.safetensors", progress=received.append
    )
    assert (dest / "model.safetensors").read_bytes() == weights
    assert sum(received) == len(weights) - 123_456
    assert not (dest / f"model.safetensors{PARTIAL_SUFFIX}").exists()


def test_a_corrupt_partial_file_is_caught_and_discarded(
    client: RegistryClient, name: str, small_dir: Path, tmp_path: Path
) -> None:
    client.push_dir(small_dir, name)
    dest = tmp_path / "dest"
    dest.mkdir()
    partial = dest / f"model.safetensors{PARTIAL_SUFFIX}"
    partial.write_bytes(b"\0" * 1000)
    with pytest.raises(DataLoss, match="arrived with sha256"):
        client.pull(name, dest, max_workers=1)
    assert not partial.exists()
    assert not (dest / "model.safetensors").exists()
    client.pull(name, dest)
    assert tree(dest) == tree(small_dir)


def test_download_from_an_offset(
    stub: registry_pb2_grpc.RegistryStub, client: RegistryClient, name: str, small_dir: Path
) -> None:
    client.push_dir(small_dir, name)
    weights = (small_dir / "model.safetensors").read_bytes()
    request = registry_pb2.DownloadArtifactRequest(
        ref=common_pb2.ModelRef(ref=f"{name}@1"), path="model.safetensors", offset=50_000
    )
    responses = list(stub.DownloadArtifact(request))
    assert responses[0].header.size == len(weights)
    assert responses[0].header.sha256 == hashlib.sha256(weights).hexdigest()
    assert len(responses) > 2
    assert b"".join(r.chunk for r in responses[1:]) == weights[50_000:]


def test_identical_files_are_stored_once(
    client: RegistryClient, registry_config: RegistryConfig, name: str, small_dir: Path
) -> None:
    first = client.push_dir(small_dir, name)
    second = client.push_dir(small_dir, name, format="hf-model")
    assert (first.number, second.number) == (1, 2)
    assert first.digest == second.digest
    stored = {p.name for p in blob_files(registry_config)}
    assert all(a.sha256 in stored for a in first.artifacts)
    assert sum(p.name == first.artifacts[0].sha256 for p in blob_files(registry_config)) == 1


def test_materialize_pulls_once_then_reuses_the_cache(
    client: RegistryClient, name: str, small_dir: Path, make_dir: Callable[..., Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    client.push_dir(small_dir, name, aliases=["production"])
    path = client.materialize(f"{name}@production", cache)
    assert path == cache / name / "1"
    assert tree(path) == tree(small_dir)
    assert (path / MARKER).is_file()

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("materialize downloaded again although the cache holds this digest")

    original = client.download
    client.download = no_download  # type: ignore[method-assign]
    try:
        assert client.materialize(name, cache) == path
        assert client.materialize(f"{name}@1", cache) == path
    finally:
        client.download = original  # type: ignore[method-assign]

    newer = make_dir({"config.json": b'{"v": 2}'})
    client.push_dir(newer, name)
    assert client.materialize(name, cache) == cache / name / "2"
    assert tree(cache / name / "2") == tree(newer)
    assert not [p for p in (cache / name).iterdir() if p.name.startswith(".")]


def test_materialize_replaces_a_stale_cached_copy(
    client: RegistryClient, name: str, small_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    client.push_dir(small_dir, name)
    stale = cache / name / "1"
    stale.mkdir(parents=True)
    (stale / "leftover.bin").write_bytes(b"from another registry")
    (stale / MARKER).write_text('{"digest": "not-this-one"}')
    assert client.materialize(name, cache) == stale
    assert tree(stale) == tree(small_dir)


def test_materialize_offline_uses_a_cached_pinned_version(
    client: RegistryClient, name: str, small_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    client.push_dir(small_dir, name)
    path = client.materialize(f"{name}@1", cache)
    with RegistryClient(f"127.0.0.1:{free_port()}", timeout=5) as offline:
        assert offline.materialize(f"{name}@1", cache) == path
        with pytest.raises(Unavailable):
            offline.materialize(name, cache)


class Interrupted(Exception):
    pass


def test_an_interrupted_push_leaves_no_version(
    client: RegistryClient, replica: Registry, name: str, small_dir: Path
) -> None:
    """Ctrl-C in the middle of the weights: the draft is discarded and the cut-off file never stored."""
    weights_sha = sha256_of(small_dir / "model.safetensors")
    sent = 0

    def interrupt_midway(n: int) -> None:
        nonlocal sent
        sent += n
        if sent > 100_000:
            raise Interrupted("Ctrl-C")

    with pytest.raises(Interrupted):
        client.push_dir(small_dir, name, progress=interrupt_midway, max_workers=1)
    versions = list(client.list_versions(name, include_drafts=True, include_deleted=True))
    assert [(v.number, v.state) for v in versions] == [(1, VersionState.DELETED)]
    assert "model.safetensors" not in [a.path for a in versions[0].artifacts]
    with pytest.raises(NotFound, match="no READY version"):
        client.resolve(name)
    wait_until(lambda: not replica.blobs.pending_uploads(), "the server to drop the partial upload")
    assert not replica.blobs.fs.exists(replica.blobs.key(weights_sha))


def test_push_of_an_empty_directory_creates_nothing(
    client: RegistryClient, name: str, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="no files"):
        client.push_dir(tmp_path / "empty", name)
    with pytest.raises(NotFound):
        client.get_model(name)


def test_push_skips_vcs_and_cache_directories(
    client: RegistryClient, name: str, make_dir: Callable[..., Path]
) -> None:
    source = make_dir(
        {"config.json": b"{}", ".git/HEAD": b"ref", ".cache/huggingface/x": b"y", "a/.gitattributes": b"*"}
    )
    version = client.push_dir(source, name)
    assert [a.path for a in version.artifacts] == ["a/.gitattributes", "config.json"]


def test_client_reports_grpc_failures_as_typed_errors(client: RegistryClient, name: str) -> None:
    with pytest.raises(NotFound, match="not found"):
        client.get_model(name)
    with pytest.raises(InvalidArgument, match="a reference is"):
        client.resolve("bad@@ref")
    assert isinstance(NotFound("x").code, grpc.StatusCode)
