"""The metadata tables and the engine that reaches them (SQLite or PostgreSQL).

Tables are prefixed `registry_` so the registry can share a PostgreSQL
database with the job services. Version numbers come from a per-model counter
row (`registry_models.next_version`) bumped under a row lock, with a unique
(model, number) constraint as the backstop.
"""

from __future__ import annotations

import sqlalchemy as sa

from cairn.common.db import ID as _ID
from cairn.common.db import JSON as _JSON
from cairn.common.db import UTCDateTime
from cairn.common.db import create_engine as _create_engine

metadata = sa.MetaData()

models = sa.Table(
    "registry_models",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("labels", _JSON, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("next_version", sa.Integer(), nullable=False),
)

versions = sa.Table(
    "registry_versions",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("model_id", _ID, sa.ForeignKey("registry_models.id"), nullable=False),
    sa.Column("number", sa.BigInteger(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("format", sa.String(64), nullable=False),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("labels", _JSON, nullable=False),
    sa.Column("recipe", _JSON, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("total_size", sa.BigInteger(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("finalized_at", UTCDateTime(), nullable=True),
    sa.Column("deleted_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("model_id", "number", name="uq_registry_versions_model_number"),
)

version_parents = sa.Table(
    "registry_version_parents",
    metadata,
    sa.Column("child_id", _ID, sa.ForeignKey("registry_versions.id"), primary_key=True),
    sa.Column("parent_id", _ID, sa.ForeignKey("registry_versions.id"), primary_key=True),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Index("ix_registry_version_parents_parent", "parent_id"),
)

artifacts = sa.Table(
    "registry_artifacts",
    metadata,
    sa.Column("version_id", _ID, sa.ForeignKey("registry_versions.id"), primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("uploaded_at", UTCDateTime(), nullable=False),
)

aliases = sa.Table(
    "registry_aliases",
    metadata,
    sa.Column("model_id", _ID, sa.ForeignKey("registry_models.id"), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version_id", _ID, sa.ForeignKey("registry_versions.id"), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Index("ix_registry_aliases_version", "version_id"),
)


def create_engine(url: str) -> sa.Engine:
    """An engine for `url` with the registry's tables in place (see `cairn.common.db.create_engine`)."""
    return _create_engine(url, metadata)
