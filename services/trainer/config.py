"""Trainer settings: flags (--jobs.max-concurrent), env (CAIRN_TRAINER_JOBS_MAX_CONCURRENT) or YAML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from cairn.common.config import GrpcPort, MetricsPort, ServiceConfig
from cairn.jobs.config import JobsConfig


def default_root() -> Path:
    """$CAIRN_HOME/trainer, else ~/.cairn/trainer."""
    home = os.environ.get("CAIRN_HOME")
    return (Path(home) if home else Path.home() / ".cairn") / "trainer"


class TrainerConfig(ServiceConfig):
    service_name: ClassVar[str] = "trainer"

    port: GrpcPort = 50056
    metrics_port: MetricsPort = 9096
    root: Path = Field(
        default_factory=default_root,
        description="directory for the default job database and work dir ($CAIRN_HOME/trainer)",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the job database, e.g. postgresql+psycopg://user@host/db "
        "(default sqlite:///<root>/jobs.db); runners write progress to it, so they must reach it",
    )
    registry: str | None = Field(
        None, description="registry address for base models and results (default $CAIRN_REGISTRY or :50055)"
    )
    work_dir: Path | None = Field(
        None,
        description="checkpoints, outputs and runner logs, per job (default <root>/work); shared storage "
        "when jobs run on Ray or Kubernetes",
    )
    cache_dir: Path | None = Field(
        None, description="where runners cache base models (default $CAIRN_HOME/cache)"
    )
    jobs: JobsConfig = JobsConfig()

    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.root.expanduser() / 'jobs.db'}"

    def work(self) -> Path:
        return (self.work_dir or self.root / "work").expanduser()

    def job_settings(self) -> dict[str, Any]:
        """What every job process receives (JSON): where the registry is, where to work and cache."""
        settings: dict[str, Any] = {"work_dir": str(self.work())}
        if self.registry:
            settings["registry"] = self.registry
        if self.cache_dir:
            settings["cache_dir"] = str(self.cache_dir.expanduser())
        return settings
