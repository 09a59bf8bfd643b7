"""Version lifecycle, references, aliases and soft delete, through the client over gRPC."""

from __future__ import annotations

import pytest
from registry_content import ready, upload

from cairn.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cairn.services.registry.client import RegistryClient
from cairn.services.registry.records import VersionState


def test_models_are_created_once_with_their_metadata(client: RegistryClient, name: str) -> None:
    model = client.create_model(name, description="a base model", labels={"family": "llama", "size": "8b"})
    assert (model.name, model.description, model.labels) == (
        name,
        "a base model",
        {"family": "llama", "size": "8b"},
    )
    assert model.latest_version == 0
    assert client.get_model(name) == model
    with pytest.raises(AlreadyExists, match="already exists"):
        client.create_model(name)


def test_create_version_without_create_model_needs_the_model(client: RegistryClient, name: str) -> None:
    with pytest.raises(NotFound, match="create it first or set create_model"):
        client.create_version(name, create_model=False)
    client.create_model(name)
    assert client.create_version(name, create_model=False).number == 1


def test_drafts_get_increasing_numbers_and_stay_invisible(client: RegistryClient, name: str) -> None:
    first = ready(client, name, b"one")
    draft = client.create_version(
        name, description="work in progress", labels={"run": "7"}, recipe={"lr": 0.5}
    )
    assert (draft.number, draft.state, draft.finalized_at) == (2, VersionState.DRAFT, None)
    assert (draft.description, draft.labels, draft.recipe) == ("work in progress", {"run": "7"}, {"lr": 0.5})
    assert client.resolve(name) == first
    assert client.resolve(f"{name}@latest") == first
    with pytest.raises(NotFound, match="is a draft"):
        client.resolve(f"{name}@2")
    assert [v.number for v in client.list_versions(name)] == [1]
    assert [v.number for v in client.list_versions(name, include_drafts=True)] == [2, 1]
    assert client.get_model(name).latest_version == 1


def test_finalize_records_digest_size_and_time(client: RegistryClient, name: str) -> None:
    draft = client.create_version(name)
    upload(client, draft, "b.bin", b"bbbb")
    upload(client, draft, "a/config.json", b"{}")
    final = client.finalize(name, draft.number)
    assert final.state is VersionState.READY
    assert [a.path for a in final.artifacts] == ["a/config.json", "b.bin"]
    assert final.total_size == 6
    assert len(final.digest) == 64
    assert final.finalized_at is not None and final.finalized_at >= final.created_at
    assert client.resolve(name) == final


def test_finalize_refuses_empty_drafts_and_second_finalizes(client: RegistryClient, name: str) -> None:
    draft = client.create_version(name)
    with pytest.raises(FailedPrecondition, match="has no artifacts"):
        client.finalize(name, draft.number)
    upload(client, draft, "w.bin", b"w")
    client.finalize(name, draft.number)
    with pytest.raises(FailedPrecondition, match="finalized and immutable"):
        client.finalize(name, draft.number)


def test_latest_is_the_highest_ready_version(client: RegistryClient, name: str) -> None:
    v1 = ready(client, name, b"1")
    v2 = ready(client, name, b"2")
    client.create_version(name)
    assert client.resolve(name) == v2
    client.delete(f"{name}@2")
    assert client.resolve(name) == v1
    assert client.get_model(name).latest_version == 1
    client.delete(f"{name}@1")
    with pytest.raises(NotFound, match="no READY version"):
        client.resolve(name)
    assert client.get_model(name).latest_version == 0


def test_aliases_set_move_resolve_and_delete(client: RegistryClient, name: str) -> None:
    v1 = ready(client, name, b"1")
    v2 = ready(client, name, b"2")
    alias = client.set_alias(name, "production", 1)
    assert (alias.model, alias.alias, alias.version) == (name, "production", 1)
    assert client.resolve(f"{name}@production") == client.resolve(f"{name}@1")
    assert client.resolve(f"{name}@production").aliases == ("production",)

    moved = client.set_alias(name, "production", 2)
    assert moved.version == 2 and moved.updated_at >= alias.updated_at
    assert client.resolve(f"{name}@production").number == 2
    assert client.resolve(f"{name}@1").aliases == ()
    client.set_alias(name, "staging", 2)
    assert client.resolve(f"{name}@2").aliases == ("production", "staging")
    assert [(a.alias, a.version) for a in client.get_model(name).aliases] == [
        ("production", 2),
        ("staging", 2),
    ]

    assert client.delete_alias(name, "production") == 2
    with pytest.raises(NotFound, match=r"alias 'production' is not defined .* \(defined: staging\)"):
        client.resolve(f"{name}@production")
    with pytest.raises(NotFound, match="not defined"):
        client.delete_alias(name, "production")
    assert (v1.number, v2.number) == (1, 2)


def test_finalize_can_point_aliases(client: RegistryClient, name: str) -> None:
    ready(client, name, b"1")
    client.set_alias(name, "production", 1)
    draft = client.create_version(name)
    upload(client, draft, "w.bin", b"2")
    final = client.finalize(name, draft.number, aliases=["production", "canary", "production"])
    assert final.aliases == ("canary", "production")
    assert client.resolve(f"{name}@production").number == 2


def test_aliases_only_point_at_ready_versions(client: RegistryClient, name: str) -> None:
    ready(client, name, b"1")
    draft = client.create_version(name)
    with pytest.raises(FailedPrecondition, match=r"READY version.*draft"):
        client.set_alias(name, "production", draft.number)
    client.delete(f"{name}@1")
    with pytest.raises(FailedPrecondition, match="deleted"):
        client.set_alias(name, "production", 1)
    with pytest.raises(NotFound, match="does not exist"):
        client.set_alias(name, "production", 9)


@pytest.mark.parametrize("alias", ["latest", "Latest", "3", "-prod", "pro duction", "a" * 65, ""])
def test_reserved_and_malformed_alias_names(client: RegistryClient, name: str, alias: str) -> None:
    ready(client, name)
    with pytest.raises(InvalidArgument, match="alias"):
        client.set_alias(name, alias, 1)


def test_delete_refuses_while_an_alias_points_at_the_version(client: RegistryClient, name: str) -> None:
    ready(client, name)
    client.set_alias(name, "production", 1)
    for ref in (f"{name}@1", f"{name}@production"):
        with pytest.raises(FailedPrecondition, match=r"still the target of alias.*production"):
            client.delete(ref)
    assert client.resolve(f"{name}@1").state is VersionState.READY
    client.delete_alias(name, "production")
    deleted = client.delete(f"{name}@1")
    assert deleted.state is VersionState.DELETED and deleted.deleted_at is not None


def test_soft_deleted_versions_are_kept_but_not_resolvable(client: RegistryClient, name: str) -> None:
    v1 = ready(client, name, b"1")
    client.delete(f"{name}@1")
    with pytest.raises(NotFound, match="was deleted"):
        client.resolve(f"{name}@1")
    with pytest.raises(NotFound, match="already deleted"):
        client.delete(f"{name}@1")
    kept = list(client.list_versions(name, include_deleted=True))
    assert [(v.number, v.state, v.digest) for v in kept] == [(1, VersionState.DELETED, v1.digest)]
    assert list(client.list_versions(name)) == []
    assert ready(client, name, b"2").number == 2


def test_discarding_a_draft(client: RegistryClient, name: str) -> None:
    draft = client.create_version(name)
    discarded = client.delete(f"{name}@{draft.number}")
    assert discarded.state is VersionState.DELETED
    with pytest.raises(FailedPrecondition, match="deleted"):
        client.finalize(name, draft.number)


def test_delete_needs_an_explicit_version(client: RegistryClient, name: str) -> None:
    ready(client, name)
    for ref in (name, f"{name}@latest"):
        with pytest.raises(InvalidArgument, match="explicit version"):
            client.delete(ref)


def test_recipes_keep_their_structure(client: RegistryClient, name: str) -> None:
    recipe = {
        "method": "lora",
        "job_id": "train-42",
        "dataset": {"digest": "sha256:" + "a" * 64, "rows": 10000},
        "hyperparameters": {"lr": 0.0002, "epochs": 3, "targets": ["q_proj", "v_proj"], "bf16": True},
        "notes": None,
    }
    version = ready(client, name, recipe=recipe, format="peft-adapter")
    assert version.recipe == recipe
    assert client.resolve(name).recipe == recipe
