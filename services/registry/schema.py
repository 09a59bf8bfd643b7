"""The metadata tables and the engine that reaches them (SQLite or PostgreSQL).

Tables are prefixed `registry_` so the registry can share a PostgreSQL
database with the job services. Version numbers come from a per-model counter
row (`registry_models.next_version`) bumped under a row lock, with a unique
(model, number) constraint as the backstop.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine, make_url

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware UTC in and out, whatever the backend keeps (SQLite keeps naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(timezone.utc).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


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

WRITE_OPTION = "cairn_registry_write"


def create_engine(url: str) -> Engine:
    """An engine for `url` with the schema in place.

    "postgresql://" is read as psycopg 3 (the driver cairn installs). SQLite
    runs in WAL mode with writers taking the lock at BEGIN (BEGIN IMMEDIATE), so
    concurrent writers queue on the busy timeout instead of failing on a
    read-to-write upgrade.
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed)
    else:
        engine = sa.create_engine(parsed, pool_pre_ping=True)
    metadata.create_all(engine)
    return engine


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Hand transaction control to the "begin" hook below instead of pysqlite's implicit BEGIN.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")

    return engine
