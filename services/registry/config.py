"""Registry settings (flags --database-url, env CAIRN_REGISTRY_DATABASE_URL, YAML `database_url:`, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from cairn.common.config import GrpcPort, MetricsPort, ServiceConfig, cairn_home

from .records import DEFAULT_CHUNK_SIZE

MAX_CHUNK_SIZE = 4 << 20


class RegistryConfig(ServiceConfig):
    service_name: ClassVar[str] = "registry"

    port: GrpcPort = 50055
    metrics_port: MetricsPort = 9095
    root: Path = Field(
        default_factory=lambda: cairn_home("registry"),
        description="directory for the default SQLite database and blob store ($CAIRN_HOME/registry)",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the metadata database, e.g. postgresql+psycopg://user@host/db "
        "(default sqlite:///<root>/registry.db)",
    )
    blob_url: str | None = Field(
        None,
        description="fsspec URL of the artifact store, e.g. s3://bucket/prefix (default file://<root>/blobs)",
    )
    blob_storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for blob_url, e.g. {endpoint_url: http://minio:9000}",
    )
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, gt=0, le=MAX_CHUNK_SIZE, description="download chunk bytes")
    max_transfers: int = Field(64, gt=0, description="uploads and downloads served at once; more wait")
    stale_upload_hours: float = Field(
        24.0, gt=0, description="on start, delete uploads a crash abandoned longer ago than this"
    )

    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.root.expanduser() / 'registry.db'}"

    def blobs(self) -> str:
        return self.blob_url or f"file://{self.root.expanduser() / 'blobs'}"
