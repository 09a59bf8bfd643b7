"""Trainer settings: flags (--jobs.max-concurrent), env (CAIRN_TRAINER_JOBS_MAX_CONCURRENT) or YAML."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from cairn.common.config import GrpcPort, MetricsPort, cairn_home
from cairn.jobs.config import JobServiceConfig


class TrainerConfig(JobServiceConfig):
    service_name: ClassVar[str] = "trainer"

    port: GrpcPort = 50056
    metrics_port: MetricsPort = 9096
    root: Path = Field(
        default_factory=lambda: cairn_home("trainer"),
        description="directory for the default job database and work dir ($CAIRN_HOME/trainer)",
    )
