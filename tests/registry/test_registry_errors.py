"""Bad input on every RPC: the right status code and a message a person can act on."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from registry_content import ready

from cairn.services.registry.client import RegistryClient
from cairn.v1 import common_pb2, registry_pb2, registry_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UPLOAD = registry_pb2.UploadArtifactRequest
SHA = hashlib.sha256(b"x").hexdigest()


@dataclass(frozen=True)
class World:
    """m@1 READY (alias production), m@2 READY, m@3 DRAFT, m@4 DELETED; `missing` names no model."""

    m: str
    missing: str


def ref(text: str) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(ref=text)


def header(model: str, version: int, path: str = "w.bin", size: int = 1, sha256: str = SHA) -> UPLOAD:
    return UPLOAD(
        header=registry_pb2.UploadArtifactHeader(
            model=model, version=version, path=path, size=size, sha256=sha256
        )
    )


@dataclass(frozen=True)
class Case:
    rpc: str
    request: Callable[[World], Any]
    code: grpc.StatusCode
    says: str


CASES: dict[str, Case] = {
    "create-model-empty-name": Case(
        "CreateModel", lambda w: registry_pb2.CreateModelRequest(name=""), INVALID, "model name is empty"
    ),
    "create-model-malformed-name": Case(
        "CreateModel", lambda w: registry_pb2.CreateModelRequest(name="my model"), INVALID, "a model name is"
    ),
    "create-model-duplicate": Case(
        "CreateModel", lambda w: registry_pb2.CreateModelRequest(name=w.m), EXISTS, "already exists"
    ),
    "create-model-bad-label": Case(
        "CreateModel",
        lambda w: registry_pb2.CreateModelRequest(name=w.missing, labels={"bad key!": "x"}),
        INVALID,
        "label key 'bad key!' is malformed",
    ),
    "create-model-long-description": Case(
        "CreateModel",
        lambda w: registry_pb2.CreateModelRequest(name=w.missing, description="x" * 5000),
        INVALID,
        "description is 5000 characters long",
    ),
    "get-model-unknown": Case(
        "GetModel", lambda w: registry_pb2.GetModelRequest(name=w.missing), NOT_FOUND, "not found"
    ),
    "get-model-malformed": Case(
        "GetModel", lambda w: registry_pb2.GetModelRequest(name="a/b/c"), INVALID, "a model name is"
    ),
    "list-models-bad-token": Case(
        "ListModels", lambda w: registry_pb2.ListModelsRequest(page_token="garbage"), INVALID, "page_token"
    ),
    "list-models-impossible-prefix": Case(
        "ListModels",
        lambda w: registry_pb2.ListModelsRequest(name_prefix="a b"),
        INVALID,
        "cannot match any model",
    ),
    "create-version-unknown-model": Case(
        "CreateVersion",
        lambda w: registry_pb2.CreateVersionRequest(model=w.missing, format="hf-model"),
        NOT_FOUND,
        "create it first or set create_model",
    ),
    "create-version-malformed-model": Case(
        "CreateVersion",
        lambda w: registry_pb2.CreateVersionRequest(model="-x", format="hf-model", create_model=True),
        INVALID,
        "a model name is",
    ),
    "create-version-no-format": Case(
        "CreateVersion", lambda w: registry_pb2.CreateVersionRequest(model=w.m), INVALID, "format is required"
    ),
    "create-version-bad-format": Case(
        "CreateVersion",
        lambda w: registry_pb2.CreateVersionRequest(model=w.m, format="hf model"),
        INVALID,
        "format 'hf model' is malformed",
    ),
    "create-version-malformed-parent": Case(
        "CreateVersion",
        lambda w: registry_pb2.CreateVersionRequest(model=w.m, format="hf-model", parents=[ref(f"{w.m}@0")]),
        INVALID,
        "a reference is",
    ),
    "create-version-unknown-parent": Case(
        "CreateVersion",
        lambda w: registry_pb2.CreateVersionRequest(model=w.m, format="hf-model", parents=[ref(f"{w.m}@99")]),
        NOT_FOUND,
        "does not exist",
    ),
    "create-version-draft-parent": Case(
        "CreateVersion",
        lambda w: registry_pb2.CreateVersionRequest(model=w.m, format="hf-model", parents=[ref(f"{w.m}@3")]),
        PRECONDITION,
        "a version can only derive from READY versions",
    ),
    "upload-empty-stream": Case("UploadArtifact", lambda w: [], INVALID, "the upload stream was empty"),
    "upload-chunk-before-header": Case(
        "UploadArtifact", lambda w: [UPLOAD(chunk=b"x"), header(w.m, 3)], INVALID, "got a chunk before it"
    ),
    "upload-second-header": Case(
        "UploadArtifact", lambda w: [header(w.m, 3), header(w.m, 3)], INVALID, "a second header arrived"
    ),
    "upload-bad-sha256": Case(
        "UploadArtifact",
        lambda w: [header(w.m, 3, sha256="XYZ"), UPLOAD(chunk=b"x")],
        INVALID,
        "64 lowercase hex",
    ),
    "upload-negative-version": Case(
        "UploadArtifact", lambda w: [header(w.m, 0), UPLOAD(chunk=b"x")], INVALID, "version number >= 1"
    ),
    "upload-unknown-version": Case(
        "UploadArtifact", lambda w: [header(w.m, 99), UPLOAD(chunk=b"x")], NOT_FOUND, "has versions 1..4"
    ),
    "upload-unknown-model": Case(
        "UploadArtifact", lambda w: [header(w.missing, 1), UPLOAD(chunk=b"x")], NOT_FOUND, "not found"
    ),
    "upload-path-traversal": Case(
        "UploadArtifact",
        lambda w: [header(w.m, 3, path="../../etc/passwd")],
        INVALID,
        'has a "." or ".." segment',
    ),
    "upload-absolute-path": Case(
        "UploadArtifact", lambda w: [header(w.m, 3, path="/etc/passwd")], INVALID, "is absolute"
    ),
    "upload-into-finalized": Case(
        "UploadArtifact",
        lambda w: [header(w.m, 1), UPLOAD(chunk=b"x")],
        PRECONDITION,
        "finalized and immutable",
    ),
    "upload-into-deleted": Case(
        "UploadArtifact", lambda w: [header(w.m, 4), UPLOAD(chunk=b"x")], PRECONDITION, "it was deleted"
    ),
    "finalize-unknown": Case(
        "FinalizeVersion",
        lambda w: registry_pb2.FinalizeVersionRequest(model=w.m, version=99),
        NOT_FOUND,
        "does not exist",
    ),
    "finalize-empty-draft": Case(
        "FinalizeVersion",
        lambda w: registry_pb2.FinalizeVersionRequest(model=w.m, version=3),
        PRECONDITION,
        "has no artifacts",
    ),
    "finalize-twice": Case(
        "FinalizeVersion",
        lambda w: registry_pb2.FinalizeVersionRequest(model=w.m, version=1),
        PRECONDITION,
        "finalized and immutable",
    ),
    "finalize-bad-alias": Case(
        "FinalizeVersion",
        lambda w: registry_pb2.FinalizeVersionRequest(model=w.m, version=3, aliases=["latest"]),
        INVALID,
        "reserved for the newest version",
    ),
    "get-version-empty-ref": Case(
        "GetVersion", lambda w: registry_pb2.GetVersionRequest(), INVALID, "reference is empty"
    ),
    "get-version-malformed": Case(
        "GetVersion", lambda w: registry_pb2.GetVersionRequest(ref=ref(f"{w.m}@")), INVALID, "a reference is"
    ),
    "get-version-unknown-model": Case(
        "GetVersion", lambda w: registry_pb2.GetVersionRequest(ref=ref(w.missing)), NOT_FOUND, "not found"
    ),
    "get-version-unknown-number": Case(
        "GetVersion",
        lambda w: registry_pb2.GetVersionRequest(ref=ref(f"{w.m}@7")),
        NOT_FOUND,
        "has versions 1..4",
    ),
    "get-version-unknown-alias": Case(
        "GetVersion",
        lambda w: registry_pb2.GetVersionRequest(ref=ref(f"{w.m}@staging")),
        NOT_FOUND,
        "(defined: production)",
    ),
    "get-version-draft": Case(
        "GetVersion", lambda w: registry_pb2.GetVersionRequest(ref=ref(f"{w.m}@3")), NOT_FOUND, "is a draft"
    ),
    "get-version-deleted": Case(
        "GetVersion", lambda w: registry_pb2.GetVersionRequest(ref=ref(f"{w.m}@4")), NOT_FOUND, "was deleted"
    ),
    "list-versions-unknown-model": Case(
        "ListVersions", lambda w: registry_pb2.ListVersionsRequest(model=w.missing), NOT_FOUND, "not found"
    ),
    "list-versions-bad-token": Case(
        "ListVersions",
        lambda w: registry_pb2.ListVersionsRequest(model=w.m, page_token="!!"),
        INVALID,
        "page_token",
    ),
    "delete-latest": Case(
        "DeleteVersion",
        lambda w: registry_pb2.DeleteVersionRequest(ref=ref(w.m)),
        INVALID,
        "explicit version",
    ),
    "delete-aliased": Case(
        "DeleteVersion",
        lambda w: registry_pb2.DeleteVersionRequest(ref=ref(f"{w.m}@1")),
        PRECONDITION,
        "move or delete them first",
    ),
    "delete-unknown": Case(
        "DeleteVersion",
        lambda w: registry_pb2.DeleteVersionRequest(ref=ref(f"{w.m}@99")),
        NOT_FOUND,
        "does not exist",
    ),
    "delete-malformed": Case(
        "DeleteVersion", lambda w: registry_pb2.DeleteVersionRequest(ref=ref("@1")), INVALID, "a reference is"
    ),
    "download-unknown-path": Case(
        "DownloadArtifact",
        lambda w: registry_pb2.DownloadArtifactRequest(ref=ref(f"{w.m}@1"), path="nope.bin"),
        NOT_FOUND,
        "it has: w.bin",
    ),
    "download-traversal": Case(
        "DownloadArtifact",
        lambda w: registry_pb2.DownloadArtifactRequest(ref=ref(f"{w.m}@1"), path="../w.bin"),
        INVALID,
        "artifact path",
    ),
    "download-past-the-end": Case(
        "DownloadArtifact",
        lambda w: registry_pb2.DownloadArtifactRequest(ref=ref(f"{w.m}@1"), path="w.bin", offset=2),
        INVALID,
        "offset 2 is outside 'w.bin' (1 bytes)",
    ),
    "download-draft": Case(
        "DownloadArtifact",
        lambda w: registry_pb2.DownloadArtifactRequest(ref=ref(f"{w.m}@3"), path="w.bin"),
        NOT_FOUND,
        "is a draft",
    ),
    "download-malformed-ref": Case(
        "DownloadArtifact",
        lambda w: registry_pb2.DownloadArtifactRequest(ref=ref("a@b@c"), path="w.bin"),
        INVALID,
        "a reference is",
    ),
    "set-alias-bad-name": Case(
        "SetAlias",
        lambda w: registry_pb2.SetAliasRequest(model=w.m, alias="pro duction", version=1),
        INVALID,
        "an alias is",
    ),
    "set-alias-latest": Case(
        "SetAlias",
        lambda w: registry_pb2.SetAliasRequest(model=w.m, alias="latest", version=1),
        INVALID,
        "reserved",
    ),
    "set-alias-number": Case(
        "SetAlias",
        lambda w: registry_pb2.SetAliasRequest(model=w.m, alias="2", version=1),
        INVALID,
        "malformed",
    ),
    "set-alias-draft": Case(
        "SetAlias",
        lambda w: registry_pb2.SetAliasRequest(model=w.m, alias="canary", version=3),
        PRECONDITION,
        "a draft",
    ),
    "set-alias-unknown-version": Case(
        "SetAlias",
        lambda w: registry_pb2.SetAliasRequest(model=w.m, alias="canary", version=99),
        NOT_FOUND,
        "does not exist",
    ),
    "set-alias-unknown-model": Case(
        "SetAlias",
        lambda w: registry_pb2.SetAliasRequest(model=w.missing, alias="canary", version=1),
        NOT_FOUND,
        "not found",
    ),
    "set-alias-version-zero": Case(
        "SetAlias",
        lambda w: registry_pb2.SetAliasRequest(model=w.m, alias="canary"),
        INVALID,
        "version number >= 1",
    ),
    "delete-alias-unknown": Case(
        "DeleteAlias",
        lambda w: registry_pb2.DeleteAliasRequest(model=w.m, alias="staging"),
        NOT_FOUND,
        "not defined",
    ),
    "delete-alias-bad-name": Case(
        "DeleteAlias",
        lambda w: registry_pb2.DeleteAliasRequest(model=w.m, alias=""),
        INVALID,
        "alias is empty",
    ),
    "delete-alias-unknown-model": Case(
        "DeleteAlias",
        lambda w: registry_pb2.DeleteAliasRequest(model=w.missing, alias="production"),
        NOT_FOUND,
        "not found",
    ),
    "lineage-malformed": Case(
        "GetLineage", lambda w: registry_pb2.GetLineageRequest(ref=ref("x@")), INVALID, "a reference is"
    ),
    "lineage-unknown": Case(
        "GetLineage", lambda w: registry_pb2.GetLineageRequest(ref=ref(w.missing)), NOT_FOUND, "not found"
    ),
    "lineage-draft": Case(
        "GetLineage", lambda w: registry_pb2.GetLineageRequest(ref=ref(f"{w.m}@3")), NOT_FOUND, "is a draft"
    ),
}


@pytest.fixture(scope="module")
def world(client: RegistryClient) -> Iterator[World]:
    prefix = f"e{uuid.uuid4().hex[:12]}"
    m = f"{prefix}/model"
    ready(client, m, b"x")
    client.set_alias(m, "production", 1)
    ready(client, m, b"y")
    client.create_version(m)
    client.delete(client.create_version(m).ref)
    yield World(m=m, missing=f"{prefix}/missing")


def call(stub: registry_pb2_grpc.RegistryStub, rpc: str, request: Any) -> Any:
    method = getattr(stub, rpc)
    if rpc == "UploadArtifact":
        return method(iter(request), timeout=30)
    if rpc == "DownloadArtifact":
        return list(method(request, timeout=30))
    return method(request, timeout=30)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input(stub: registry_pb2_grpc.RegistryStub, world: World, case: Case) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call(stub, case.rpc, case.request(world))
    assert err.value.code() == case.code, err.value.details()
    assert case.says in err.value.details()


def test_every_rpc_has_bad_input_cases() -> None:
    service = registry_pb2.DESCRIPTOR.services_by_name["Registry"]
    assert {c.rpc for c in CASES.values()} == set(service.methods_by_name)


def test_bad_input_changes_nothing(
    stub: registry_pb2_grpc.RegistryStub, client: RegistryClient, world: World
) -> None:
    before = list(client.list_versions(world.m, include_drafts=True, include_deleted=True))
    for case in CASES.values():
        with pytest.raises(grpc.RpcError):
            call(stub, case.rpc, case.request(world))
    assert list(client.list_versions(world.m, include_drafts=True, include_deleted=True)) == before
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModel(registry_pb2.GetModelRequest(name=world.missing))
    assert err.value.code() == NOT_FOUND
