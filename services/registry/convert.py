"""Records <-> `cairn.v1` registry messages, both directions, in one place (server and client use it)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from google.protobuf import json_format, struct_pb2

from cairn.common.timestamps import to_timestamp
from cairn.v1 import common_pb2, registry_pb2

from .records import Alias, Artifact, Lineage, LineageEdge, Model, Version, VersionKey, VersionState

_STATE_TO_PROTO = {
    VersionState.DRAFT: registry_pb2.VERSION_STATE_DRAFT,
    VersionState.READY: registry_pb2.VERSION_STATE_READY,
    VersionState.DELETED: registry_pb2.VERSION_STATE_DELETED,
}
_STATE_FROM_PROTO = {v: k for k, v in _STATE_TO_PROTO.items()}


def _datetime(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return getattr(message, field).ToDatetime(tzinfo=timezone.utc)


def recipe_to_struct(recipe: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(recipe)
    return struct


def recipe_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Struct numbers are all doubles; whole ones come back as ints, so `{"epochs": 3}` round-trips."""
    return _whole_numbers(json_format.MessageToDict(struct))


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def artifact_to_proto(artifact: Artifact) -> registry_pb2.Artifact:
    return registry_pb2.Artifact(path=artifact.path, size=artifact.size, sha256=artifact.sha256)


def artifact_from_proto(message: registry_pb2.Artifact) -> Artifact:
    return Artifact(message.path, message.size, message.sha256)


def alias_to_proto(alias: Alias) -> registry_pb2.Alias:
    return registry_pb2.Alias(
        model=alias.model, alias=alias.alias, version=alias.version, updated_at=to_timestamp(alias.updated_at)
    )


def alias_from_proto(message: registry_pb2.Alias) -> Alias:
    return Alias(message.model, message.alias, message.version, _datetime(message, "updated_at"))


def model_to_proto(model: Model) -> registry_pb2.Model:
    return registry_pb2.Model(
        name=model.name,
        description=model.description,
        labels=model.labels,
        created_at=to_timestamp(model.created_at),
        latest_version=model.latest_version,
        aliases=[alias_to_proto(a) for a in model.aliases],
    )


def model_from_proto(message: registry_pb2.Model) -> Model:
    return Model(
        name=message.name,
        description=message.description,
        labels=dict(message.labels),
        created_at=_datetime(message, "created_at"),
        latest_version=message.latest_version,
        aliases=tuple(alias_from_proto(a) for a in message.aliases),
    )


def key_to_proto(key: VersionKey) -> common_pb2.VersionRef:
    return common_pb2.VersionRef(model=key.model, version=key.number)


def key_from_proto(message: common_pb2.VersionRef) -> VersionKey:
    return VersionKey(message.model, message.version)


def version_to_proto(version: Version) -> registry_pb2.Version:
    return registry_pb2.Version(
        model=version.model,
        number=version.number,
        state=_STATE_TO_PROTO[version.state],
        format=version.format,
        artifacts=[artifact_to_proto(a) for a in version.artifacts],
        parents=[key_to_proto(p) for p in version.parents],
        recipe=recipe_to_struct(version.recipe),
        description=version.description,
        labels=version.labels,
        aliases=version.aliases,
        digest=version.digest,
        total_size=version.total_size,
        created_at=to_timestamp(version.created_at),
        finalized_at=to_timestamp(version.finalized_at),
        deleted_at=to_timestamp(version.deleted_at),
    )


def version_from_proto(message: registry_pb2.Version) -> Version:
    return Version(
        model=message.model,
        number=message.number,
        state=_STATE_FROM_PROTO[message.state],
        format=message.format,
        created_at=_datetime(message, "created_at"),
        artifacts=tuple(artifact_from_proto(a) for a in message.artifacts),
        parents=tuple(key_from_proto(p) for p in message.parents),
        recipe=recipe_from_struct(message.recipe),
        description=message.description,
        labels=dict(message.labels),
        aliases=tuple(message.aliases),
        digest=message.digest,
        total_size=message.total_size,
        finalized_at=_datetime(message, "finalized_at"),
        deleted_at=_datetime(message, "deleted_at"),
    )


def lineage_to_proto(lineage: Lineage) -> registry_pb2.Lineage:
    return registry_pb2.Lineage(
        root=version_to_proto(lineage.root),
        ancestors=[version_to_proto(v) for v in lineage.ancestors],
        descendants=[version_to_proto(v) for v in lineage.descendants],
        edges=[
            registry_pb2.LineageEdge(child=key_to_proto(e.child), parent=key_to_proto(e.parent))
            for e in lineage.edges
        ],
    )


def lineage_from_proto(message: registry_pb2.Lineage) -> Lineage:
    return Lineage(
        root=version_from_proto(message.root),
        ancestors=tuple(version_from_proto(v) for v in message.ancestors),
        descendants=tuple(version_from_proto(v) for v in message.descendants),
        edges=tuple(LineageEdge(key_from_proto(e.child), key_from_proto(e.parent)) for e in message.edges),
    )
