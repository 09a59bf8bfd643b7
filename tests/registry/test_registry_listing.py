"""Listing with keyset page tokens: complete, no duplicates, stable while rows are added."""

from __future__ import annotations

import grpc
import pytest
from registry_content import ready

from cairn.services.registry.client import RegistryClient
from cairn.services.registry.core import Registry
from cairn.services.registry.records import VersionState
from cairn.v1 import registry_pb2, registry_pb2_grpc

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def list_models_pages(stub: registry_pb2_grpc.RegistryStub, prefix: str, page_size: int) -> list[list[str]]:
    pages, token = [], ""
    while True:
        response = stub.ListModels(
            registry_pb2.ListModelsRequest(page_size=page_size, page_token=token, name_prefix=prefix)
        )
        pages.append([m.name for m in response.models])
        token = response.next_page_token
        if not token:
            return pages


def test_models_page_newest_first_without_gaps_or_duplicates(
    stub: registry_pb2_grpc.RegistryStub, replica: Registry, prefix: str
) -> None:
    names = [f"{prefix}/m{i:02d}" for i in range(23)]
    for n in names:
        replica.create_model(n)
    pages = list_models_pages(stub, prefix, 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [n for page in pages for n in page] == names[::-1]
    assert list_models_pages(stub, prefix, 0) == [names[::-1]]
    assert list_models_pages(stub, prefix, 100_000) == [names[::-1]]


def test_models_added_while_paging_are_neither_repeated_nor_skipping_others(
    stub: registry_pb2_grpc.RegistryStub, replica: Registry, prefix: str
) -> None:
    names = [f"{prefix}/m{i:02d}" for i in range(10)]
    for n in names:
        replica.create_model(n)
    first = stub.ListModels(registry_pb2.ListModelsRequest(page_size=4, name_prefix=prefix))
    for i in range(3):
        replica.create_model(f"{prefix}/late{i}")
    seen = [m.name for m in first.models]
    token = first.next_page_token
    while token:
        page = stub.ListModels(
            registry_pb2.ListModelsRequest(page_size=4, page_token=token, name_prefix=prefix)
        )
        seen += [m.name for m in page.models]
        token = page.next_page_token
    assert seen == names[::-1]


def test_name_prefix_is_exact_and_case_sensitive(
    stub: registry_pb2_grpc.RegistryStub, replica: Registry, prefix: str
) -> None:
    for n in (f"{prefix}/a_b", f"{prefix}/aXb", f"{prefix.upper()}/a_b", f"{prefix}x/other"):
        replica.create_model(n)
    assert list_models_pages(stub, f"{prefix}/a_", 10) == [[f"{prefix}/a_b"]]
    assert list_models_pages(stub, f"{prefix}/", 10) == [[f"{prefix}/aXb", f"{prefix}/a_b"]]
    assert list_models_pages(stub, prefix.upper(), 10) == [[f"{prefix.upper()}/a_b"]]


def test_versions_page_with_state_filters(client: RegistryClient, replica: Registry, name: str) -> None:
    for i in range(1, 13):
        draft = replica.create_version(name, format="hf-model", create_model=True)
        if i % 4 == 0:
            continue
        replica.upload_artifact(name, draft.number, "w.bin", size=0, sha256=EMPTY_SHA256, chunks=[])
        replica.finalize_version(name, draft.number)
        if i % 3 == 0:
            replica.delete_version(f"{name}@{draft.number}")
    ready_numbers = [n for n in range(12, 0, -1) if n % 4 and n % 3]
    assert [v.number for v in client.list_versions(name, page_size=2)] == ready_numbers
    everything = list(client.list_versions(name, include_drafts=True, include_deleted=True, page_size=5))
    assert [v.number for v in everything] == list(range(12, 0, -1))
    states = {v.number: v.state for v in everything}
    assert (
        states[4] is VersionState.DRAFT
        and states[3] is VersionState.DELETED
        and states[1] is VersionState.READY
    )
    with_drafts = [v.number for v in client.list_versions(name, include_drafts=True, page_size=3)]
    assert with_drafts == [n for n in range(12, 0, -1) if n % 3 or n % 4 == 0]


def test_page_tokens_only_continue_their_own_query(
    stub: registry_pb2_grpc.RegistryStub, client: RegistryClient, prefix: str
) -> None:
    for i in range(3):
        ready(client, f"{prefix}/a", bytes([i]))
        ready(client, f"{prefix}/b", bytes([i]))
    page = stub.ListVersions(registry_pb2.ListVersionsRequest(model=f"{prefix}/a", page_size=1))
    assert page.next_page_token
    misuse = [
        registry_pb2.ListVersionsRequest(model=f"{prefix}/b", page_size=1, page_token=page.next_page_token),
        registry_pb2.ListVersionsRequest(
            model=f"{prefix}/a", page_size=1, page_token=page.next_page_token, include_drafts=True
        ),
    ]
    for request in misuse:
        with pytest.raises(grpc.RpcError) as err:
            stub.ListVersions(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "different query" in err.value.details()
    models = stub.ListModels(registry_pb2.ListModelsRequest(page_size=1, name_prefix=prefix))
    with pytest.raises(grpc.RpcError) as err:
        stub.ListModels(registry_pb2.ListModelsRequest(page_size=1, page_token=models.next_page_token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
