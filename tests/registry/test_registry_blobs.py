"""The blob store through fsspec: verified before visible, content-addressed, readable from an offset."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from cairn.common.errors import DataLoss, InvalidArgument, NotFound
from cairn.services.registry.blobs import BlobStore, check_sha256
from cairn.services.registry.core import Registry


@pytest.fixture(params=["memory", "file"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "memory":
        return BlobStore(f"memory://cairn-test-{uuid.uuid4().hex}/blobs")
    return BlobStore(f"file://{tmp_path}/blobs")


def chunked(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def stored_keys(blobs: BlobStore) -> list[str]:
    root = blobs.key("0" * 64).split("/sha256/")[0]
    return [p for p in blobs.fs.find(root) if "/sha256/" in p]


def test_put_then_read_back_from_any_offset(blobs: BlobStore) -> None:
    data = os.urandom(10_000)
    sha = hashlib.sha256(data).hexdigest()
    blobs.put(chunked(data), size=len(data), sha256=sha)
    assert blobs.exists(sha, len(data))
    assert blobs.key(sha).endswith(f"/sha256/{sha[:2]}/{sha[2:4]}/{sha}")
    assert b"".join(blobs.read(sha, offset=0, chunk_size=4096)) == data
    assert b"".join(blobs.read(sha, offset=9_000, chunk_size=333)) == data[9_000:]
    assert b"".join(blobs.read(sha, offset=len(data), chunk_size=333)) == b""
    assert blobs.pending_uploads() == []


@pytest.mark.parametrize(
    ("declared_size", "mutate", "message"),
    [
        (10_000, lambda d: d[:-1] + bytes([d[-1] ^ 1]), "does not match the declared"),
        (9_999, lambda d: d, "more than the declared 9999 bytes"),
        (10_001, lambda d: d, "received 10000 bytes but the header declared 10001"),
    ],
    ids=["corrupt", "too-long", "too-short"],
)
def test_mismatched_uploads_are_data_loss_and_leave_nothing(
    blobs: BlobStore, declared_size: int, mutate: object, message: str
) -> None:
    data = os.urandom(10_000)
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(DataLoss, match=message):
        blobs.put(chunked(mutate(data)), size=declared_size, sha256=sha)  # type: ignore[operator]
    assert not blobs.exists(sha, len(data))
    assert stored_keys(blobs) == []
    assert blobs.pending_uploads() == []


def test_a_stream_that_breaks_midway_leaves_nothing(blobs: BlobStore) -> None:
    data = os.urandom(5_000)

    def broken() -> Iterator[bytes]:
        yield data[:2_000]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        blobs.put(broken(), size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert stored_keys(blobs) == []
    assert blobs.pending_uploads() == []


def test_identical_content_is_stored_once_and_still_verified(blobs: BlobStore) -> None:
    data = b"shared tokenizer" * 100
    sha = hashlib.sha256(data).hexdigest()
    blobs.put(chunked(data), size=len(data), sha256=sha)
    blobs.put(chunked(data, 7), size=len(data), sha256=sha)
    assert stored_keys(blobs) == [blobs.key(sha)]
    with pytest.raises(DataLoss):
        blobs.put(chunked(b"x" * len(data)), size=len(data), sha256=sha)
    assert b"".join(blobs.read(sha, offset=0, chunk_size=64)) == data


def test_empty_blob(blobs: BlobStore) -> None:
    sha = hashlib.sha256(b"").hexdigest()
    blobs.put(iter(()), size=0, sha256=sha)
    assert blobs.exists(sha, 0)
    assert list(blobs.read(sha, offset=0, chunk_size=10)) == []


def test_missing_blob_is_not_found_before_any_byte(blobs: BlobStore) -> None:
    with pytest.raises(NotFound, match="missing"):
        blobs.read("ab" * 32, offset=0, chunk_size=10)


@pytest.mark.parametrize("bad", ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65])
def test_sha256_must_be_lowercase_hex(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="64 lowercase hex"):
        check_sha256(bad)


def test_only_uploads_abandoned_long_ago_are_removed(tmp_path: Path) -> None:
    blobs = BlobStore(f"file://{tmp_path}/blobs")
    uploads = tmp_path / "blobs" / "uploads"
    uploads.mkdir(parents=True)
    (uploads / "crashed").write_bytes(b"partial")
    (uploads / "in-flight").write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    os.utime(uploads / "crashed", (two_days_ago, two_days_ago))
    removed = blobs.remove_stale_uploads(timedelta(hours=24))
    assert [Path(p).name for p in removed] == ["crashed"]
    assert [Path(p).name for p in blobs.pending_uploads()] == ["in-flight"]


def test_the_registry_runs_on_any_fsspec_store(tmp_path: Path) -> None:
    registry = Registry.open(f"sqlite:///{tmp_path}/registry.db", f"memory://cairn-test-{uuid.uuid4().hex}")
    try:
        data = os.urandom(3000)
        draft = registry.create_version("m", format="hf-model", create_model=True)
        sha = hashlib.sha256(data).hexdigest()
        registry.upload_artifact("m", draft.number, "w.bin", size=len(data), sha256=sha, chunks=chunked(data))
        registry.finalize_version("m", draft.number)
        artifact, chunks = registry.download_artifact("m", "w.bin", offset=100)
        assert (artifact.sha256, b"".join(chunks)) == (sha, data[100:])
        assert isinstance(registry.blobs.fs, MemoryFileSystem)
    finally:
        registry.close()
