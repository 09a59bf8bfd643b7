"""Job tables. `kind` ("trainer", "quantizer") lets several job services share one database."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from cairn.common.db import ID, JSON, UTCDateTime

# Python None stored as SQL NULL (not JSON null), so "no handle" is an IS NULL test.
_OPTIONAL_JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("seq", ID, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("spec", JSON, nullable=False),
    sa.Column("labels", JSON, nullable=False),
    sa.Column("state", sa.SmallInteger(), nullable=False),
    sa.Column("runner", sa.String(16), nullable=False),
    sa.Column("progress", JSON, nullable=False),
    sa.Column("error", sa.Text(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("handle", _OPTIONAL_JSON, nullable=True),
    sa.Column("checkpoint_step", sa.BigInteger(), nullable=True),
    sa.Column("checkpoint_path", sa.Text(), nullable=True),
    sa.Column("result", _OPTIONAL_JSON, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("revision", sa.BigInteger(), nullable=False),
    sa.Index("ix_jobs_kind_state", "kind", "state"),
)

job_logs = sa.Table(
    "job_logs",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("line", sa.Text(), nullable=False),
    sa.Index("ix_job_logs_job", "job_id", "id"),
)
