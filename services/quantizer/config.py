"""Quantizer settings: flags (--jobs.max-concurrent), env (CAIRN_QUANTIZER_JOBS_MAX_CONCURRENT) or YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from cairn.common.config import GrpcPort, MetricsPort, cairn_home
from cairn.jobs.config import JobServiceConfig


class QuantizerConfig(JobServiceConfig):
    service_name: ClassVar[str] = "quantizer"

    port: GrpcPort = 50057
    metrics_port: MetricsPort = 9097
    root: Path = Field(
        default_factory=lambda: cairn_home("quantizer"),
        description="directory for the default job database and work dir ($CAIRN_HOME/quantizer)",
    )
    device: str = Field(
        "auto",
        description="where jobs calibrate and evaluate: auto (CUDA if present, else CPU), cpu, cuda, cuda:N",
    )

    def job_settings(self) -> dict[str, Any]:
        """The shared settings, plus the device jobs calibrate and evaluate on."""
        return {**super().job_settings(), "device": self.device}
