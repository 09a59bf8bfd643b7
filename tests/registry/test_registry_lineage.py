"""Lineage: parents recorded at creation, ancestors and descendants walked to a depth."""

from __future__ import annotations

import pytest
from registry_content import ready, upload

from cairn.common.errors import FailedPrecondition, InvalidArgument, NotFound
from cairn.services.registry.client import RegistryClient
from cairn.services.registry.records import LineageEdge, VersionKey, VersionState


def refs(versions: tuple) -> list[str]:  # type: ignore[type-arg]
    return [v.ref for v in versions]


@pytest.fixture
def family(client: RegistryClient, prefix: str) -> dict[str, str]:
    """base@1 <- sft@1 <- {awq@1, gptq@1}; dpo@1 derives from sft@1 and reward@1; awq@1 <- awq-tuned@1."""
    names = {k: f"{prefix}/{k}" for k in ("base", "reward", "sft", "awq", "gptq", "dpo", "awq-tuned")}
    ready(client, names["base"], b"base")
    ready(client, names["reward"], b"reward")
    ready(
        client, names["sft"], b"sft", parents=[names["base"]], recipe={"method": "sft"}, format="peft-adapter"
    )
    ready(client, names["awq"], b"awq", parents=[f"{names['sft']}@1"], format="compressed-tensors")
    ready(client, names["gptq"], b"gptq", parents=[f"{names['sft']}@latest"], format="compressed-tensors")
    ready(client, names["dpo"], b"dpo", parents=[f"{names['sft']}@1", f"{names['reward']}@1"])
    ready(client, names["awq-tuned"], b"awq-tuned", parents=[names["awq"]])
    return names


def test_parents_are_resolved_to_pinned_versions(client: RegistryClient, family: dict[str, str]) -> None:
    dpo = client.resolve(family["dpo"])
    assert dpo.parents == (VersionKey(family["sft"], 1), VersionKey(family["reward"], 1))
    assert client.resolve(family["sft"]).recipe == {"method": "sft"}


def test_ancestors_and_descendants_nearest_first(client: RegistryClient, family: dict[str, str]) -> None:
    lineage = client.show(f"{family['sft']}@1")
    assert lineage.root.ref == f"{family['sft']}@1"
    assert refs(lineage.ancestors) == [f"{family['base']}@1"]
    assert refs(lineage.descendants)[:3] == sorted(refs(lineage.descendants)[:3])
    assert set(refs(lineage.descendants)[:3]) == {f"{family[k]}@1" for k in ("awq", "gptq", "dpo")}
    assert refs(lineage.descendants)[3:] == [f"{family['awq-tuned']}@1"]
    edges = set(lineage.edges)
    assert LineageEdge(VersionKey(family["sft"], 1), VersionKey(family["base"], 1)) in edges
    assert LineageEdge(VersionKey(family["awq-tuned"], 1), VersionKey(family["awq"], 1)) in edges
    assert all(e.parent.model != family["reward"] for e in edges), "reward@1 is not in this graph"


def test_depth_limits_the_walk(client: RegistryClient, family: dict[str, str]) -> None:
    shallow = client.show(f"{family['awq-tuned']}@1", depth=1)
    assert refs(shallow.ancestors) == [f"{family['awq']}@1"]
    deep = client.show(f"{family['awq-tuned']}@1", depth=50)
    assert refs(deep.ancestors) == [f"{family[k]}@1" for k in ("awq", "sft", "base")]
    assert client.show(f"{family['awq-tuned']}@1", depth=10_000) == deep
    with pytest.raises(NotFound):
        client.show(f"{family['awq-tuned']}@2")


def test_deleted_versions_stay_in_lineage_and_drafts_stay_out(
    client: RegistryClient, family: dict[str, str]
) -> None:
    client.delete(f"{family['awq']}@1")
    draft = client.create_version(family["gptq"], parents=[family["sft"]])
    lineage = client.show(family["sft"])
    by_ref = {v.ref: v for v in lineage.descendants}
    assert by_ref[f"{family['awq']}@1"].state is VersionState.DELETED
    assert draft.ref not in by_ref
    deleted_root = client.show(f"{family['awq']}@1")
    assert refs(deleted_root.ancestors) == [f"{family['sft']}@1", f"{family['base']}@1"]
    with pytest.raises(NotFound, match="is a draft"):
        client.show(draft.ref)


def test_parents_must_exist_and_be_ready(client: RegistryClient, family: dict[str, str], name: str) -> None:
    with pytest.raises(NotFound, match=r"parent .*@7: .* does not exist"):
        client.create_version(name, parents=[f"{family['base']}@7"])
    with pytest.raises(NotFound, match="parent"):
        client.create_version(name, parents=["nobody/none"])
    draft = client.create_version(family["base"])
    with pytest.raises(FailedPrecondition, match=r"parent .* is a draft"):
        client.create_version(name, parents=[draft.ref])
    upload(client, draft, "w.bin", b"x")
    client.finalize(family["base"], draft.number)
    client.delete(draft.ref)
    with pytest.raises(FailedPrecondition, match="is deleted"):
        client.create_version(name, parents=[draft.ref])
    with pytest.raises(InvalidArgument, match="a reference is"):
        client.create_version(name, parents=["bad@@parent"])
    with pytest.raises(NotFound):
        client.get_model(name)


def test_a_version_can_derive_from_an_earlier_one_of_its_own_model(client: RegistryClient, name: str) -> None:
    ready(client, name, b"1")
    second = ready(client, name, b"2", parents=[f"{name}@1", f"{name}@1"])
    assert second.parents == (VersionKey(name, 1),)
    lineage = client.show(f"{name}@1")
    assert refs(lineage.descendants) == [f"{name}@2"]
