"""UploadArtifact at the stream level: what reaches storage, and what never does."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator

import grpc
import pytest
from registry_harness import wait_until

from cairn.services.registry.client import RegistryClient
from cairn.services.registry.core import Registry
from cairn.services.registry.records import VersionState
from cairn.v1 import registry_pb2, registry_pb2_grpc

Header = registry_pb2.UploadArtifactHeader
Request = registry_pb2.UploadArtifactRequest


def header(name: str, version: int, path: str, data: bytes, **override: object) -> Request:
    fields = {"model": name, "version": version, "path": path, "size": len(data)}
    fields["sha256"] = hashlib.sha256(data).hexdigest()
    fields.update(override)
    return Request(header=Header(**fields))


def chunks(data: bytes, size: int = 50_000) -> list[Request]:
    return [Request(chunk=data[i : i + size]) for i in range(0, len(data), size)]


def upload_error(stub: registry_pb2_grpc.RegistryStub, requests: list[Request]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadArtifact(iter(requests), timeout=30)
    return err.value


def assert_nothing_stored(replica: Registry, name: str, number: int, sha256: str) -> None:
    draft = next(v for v in replica.list_versions(name, include_drafts=True).items if v.number == number)
    assert draft.state is VersionState.DRAFT
    assert draft.artifacts == ()
    assert not replica.blobs.exists(sha256, 0) and not replica.blobs.fs.exists(replica.blobs.key(sha256))
    wait_until(lambda: not replica.blobs.pending_uploads(), "the partial upload to be removed")


@pytest.fixture
def draft(client: RegistryClient, name: str) -> int:
    return client.create_version(name, format="hf-model").number


def test_streamed_upload_is_recorded_with_its_checksum(
    stub: registry_pb2_grpc.RegistryStub, replica: Registry, name: str, draft: int
) -> None:
    data = os.urandom(180_000)
    artifact = stub.UploadArtifact(iter([header(name, draft, "w.bin", data), *chunks(data)]))
    assert (artifact.path, artifact.size, artifact.sha256) == (
        "w.bin",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    stored = replica.list_versions(name, include_drafts=True).items[0]
    assert [(a.path, a.sha256) for a in stored.artifacts] == [("w.bin", artifact.sha256)]


def test_checksum_mismatch_is_data_loss(
    stub: registry_pb2_grpc.RegistryStub, replica: Registry, name: str, draft: int
) -> None:
    data = os.urandom(120_000)
    corrupt = data[:60_000] + b"X" + data[60_001:]
    err = upload_error(stub, [header(name, draft, "w.bin", data), *chunks(corrupt)])
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "does not match the declared" in err.details()
    assert_nothing_stored(replica, name, draft, hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(("declared", "sent"), [(100_000, 99_999), (100_000, 100_001), (0, 16)])
def test_wrong_size_is_data_loss(
    stub: registry_pb2_grpc.RegistryStub, replica: Registry, name: str, draft: int, declared: int, sent: int
) -> None:
    data = os.urandom(sent)
    err = upload_error(stub, [header(name, draft, "w.bin", data, size=declared), *chunks(data)])
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "declared" in err.details()
    assert_nothing_stored(replica, name, draft, hashlib.sha256(data).hexdigest())


def test_a_cancelled_stream_stores_nothing(
    stub: registry_pb2_grpc.RegistryStub, replica: Registry, name: str, draft: int
) -> None:
    data = os.urandom(400_000)
    sent_some = threading.Event()
    release = threading.Event()

    def requests() -> Iterator[Request]:
        yield header(name, draft, "w.bin", data)
        yield from chunks(data[:200_000])
        sent_some.set()
        release.wait(30)

    call = stub.UploadArtifact.future(requests())
    assert sent_some.wait(30)
    wait_until(lambda: bool(replica.blobs.pending_uploads()), "the server to start writing the upload")
    call.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    assert_nothing_stored(replica, name, draft, hashlib.sha256(data).hexdigest())
    with pytest.raises(grpc.RpcError) as err:
        stub.FinalizeVersion(registry_pb2.FinalizeVersionRequest(model=name, version=draft))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has no artifacts" in err.value.details()


def test_reuploading_a_path_replaces_it_in_the_draft(
    stub: registry_pb2_grpc.RegistryStub, client: RegistryClient, name: str, draft: int
) -> None:
    first, second = b"first" * 1000, b"second" * 1000
    stub.UploadArtifact(iter([header(name, draft, "w.bin", first), *chunks(first)]))
    stub.UploadArtifact(iter([header(name, draft, "w.bin", second), *chunks(second)]))
    version = client.finalize(name, draft)
    assert [(a.path, a.size) for a in version.artifacts] == [("w.bin", len(second))]


@pytest.mark.parametrize(
    "path", ["../escape.bin", "a/../../b", "/etc/passwd", "a\\b", "a//b", "a/./b", "bad\x00name", "C:/x"]
)
def test_escaping_paths_are_rejected_before_any_byte_is_stored(
    stub: registry_pb2_grpc.RegistryStub, replica: Registry, name: str, draft: int, path: str
) -> None:
    data = os.urandom(1000)
    err = upload_error(stub, [header(name, draft, path, data), *chunks(data)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "artifact path" in err.details()
    assert_nothing_stored(replica, name, draft, hashlib.sha256(data).hexdigest())


def test_a_file_cannot_also_be_a_directory(
    stub: registry_pb2_grpc.RegistryStub, name: str, draft: int
) -> None:
    stub.UploadArtifact(iter([header(name, draft, "adapter", b"x"), *chunks(b"x")]))
    err = upload_error(stub, [header(name, draft, "adapter/weights.bin", b"y"), *chunks(b"y")])
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "both a file and a directory" in err.details()


def test_finalized_versions_are_immutable(
    stub: registry_pb2_grpc.RegistryStub, client: RegistryClient, replica: Registry, name: str, draft: int
) -> None:
    data = b"weights" * 100
    stub.UploadArtifact(iter([header(name, draft, "w.bin", data), *chunks(data)]))
    final = client.finalize(name, draft)
    for path, payload in [("w.bin", b"changed"), ("new.bin", b"extra")]:
        err = upload_error(stub, [header(name, draft, path, payload), *chunks(payload)])
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "finalized and immutable" in err.details()
    err = upload_error(stub, [header(name, draft, "w.bin", data)])
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert client.resolve(f"{name}@{draft}") == final
    assert replica.get_version(name).digest == final.digest
