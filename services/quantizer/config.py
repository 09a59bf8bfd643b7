"""Quantizer settings: flags (--jobs.max-concurrent), env (CAIRN_QUANTIZER_JOBS_MAX_CONCURRENT) or YAML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from cairn.common.config import GrpcPort, MetricsPort, ServiceConfig
from cairn.jobs.config import JobsConfig


def default_root() -> Path:
    """$CAIRN_HOME/quantizer, else ~/.cairn/quantizer."""
    home = os.environ.get("CAIRN_HOME")
    return (Path(home) if home else Path.home() / ".cairn") / "quantizer"


class QuantizerConfig(ServiceConfig):
    service_name: ClassVar[str] = "quantizer"

    port: GrpcPort = 50057
    metrics_port: MetricsPort = 9097
    root: Path = Field(
        default_factory=default_root,
        description="directory for the default job database and work dir ($CAIRN_HOME/quantizer)",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the job database, e.g. postgresql+psycopg://user@host/db "
        "(default sqlite:///<root>/jobs.db); runners write progress to it, so they must reach it",
    )
    registry: str | None = Field(
        None, description="registry address for source models and results (default $CAIRN_REGISTRY or :50055)"
    )
    work_dir: Path | None = Field(
        None,
        description="artifacts and runner logs, per job (default <root>/work); shared storage when jobs run "
        "on Ray or Kubernetes",
    )
    cache_dir: Path | None = Field(
        None, description="where runners cache source models (default $CAIRN_HOME/cache)"
    )
    device: str = Field(
        "auto",
        description="where jobs calibrate and evaluate: auto (CUDA if present, else CPU), cpu, cuda, cuda:N",
    )
    jobs: JobsConfig = JobsConfig()

    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.root.expanduser() / 'jobs.db'}"

    def work(self) -> Path:
        return (self.work_dir or self.root / "work").expanduser()

    def job_settings(self) -> dict[str, Any]:
        """What every job process receives (JSON): registry, work and cache dirs, device."""
        settings: dict[str, Any] = {"work_dir": str(self.work()), "device": self.device}
        if self.registry:
            settings["registry"] = self.registry
        if self.cache_dir:
            settings["cache_dir"] = str(self.cache_dir.expanduser())
        return settings
