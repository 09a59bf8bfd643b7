"""What the registry hands out: plain, immutable values shared by core, server and client.

The server turns these into `cairn.v1` messages and the client turns the
messages back (see `convert.py`), so Python callers on either side of the wire
see the same objects.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Bytes per streamed message, uploads and downloads alike: well under gRPC's default 4 MiB message limit.
DEFAULT_CHUNK_SIZE = 1 << 20


class VersionState(enum.Enum):
    DRAFT = "draft"
    READY = "ready"
    DELETED = "deleted"


@dataclass(frozen=True)
class Artifact:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class VersionKey:
    """One version pinned by number (the wire's VersionRef)."""

    model: str
    number: int

    def __str__(self) -> str:
        return f"{self.model}@{self.number}"


@dataclass(frozen=True)
class Alias:
    model: str
    alias: str
    version: int
    updated_at: datetime


@dataclass(frozen=True)
class Model:
    name: str
    description: str
    labels: dict[str, str]
    created_at: datetime
    latest_version: int
    aliases: tuple[Alias, ...] = ()


@dataclass(frozen=True)
class Version:
    model: str
    number: int
    state: VersionState
    format: str
    created_at: datetime
    artifacts: tuple[Artifact, ...] = ()
    parents: tuple[VersionKey, ...] = ()
    recipe: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    digest: str = ""
    total_size: int = 0
    finalized_at: datetime | None = None
    deleted_at: datetime | None = None

    @property
    def key(self) -> VersionKey:
        return VersionKey(self.model, self.number)

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.number}"

    def artifact(self, path: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.path == path), None)


@dataclass(frozen=True)
class LineageEdge:
    child: VersionKey
    parent: VersionKey


@dataclass(frozen=True)
class Lineage:
    root: Version
    ancestors: tuple[Version, ...]
    descendants: tuple[Version, ...]
    edges: tuple[LineageEdge, ...]


@dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_page_token: str = ""


def version_digest(artifacts: Iterable[Artifact]) -> str:
    """One sha256 for a whole version, reproducible with coreutils.

    It is the sha256 of the `sha256sum`-style manifest of the version, sorted by
    path: one line "<sha256>  <path>\\n" per artifact.
    """
    manifest = "".join(f"{a.sha256}  {a.path}\n" for a in sorted(artifacts, key=lambda a: a.path))
    return hashlib.sha256(manifest.encode()).hexdigest()
