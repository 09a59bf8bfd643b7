"""Settings every job service shares (nested as `jobs:` in its config) and the runners they build."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cairn.common.config import ServiceConfig, cairn_home

from .records import RunnerKind
from .runners.base import Runner


class RayRunnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(None, description="Ray address (ray://host:10001, auto); unset: local")
    namespace: str = Field("cairn", description="Ray namespace of the job actors")
    cpus_per_worker: float = Field(1.0, ge=0)
    gpus_per_worker: float = Field(1.0, ge=0, description="GPUs per data-parallel rank (0 on CPU clusters)")
    strategy: str = Field("PACK", description="placement strategy of an attempt's ranks (PACK, SPREAD, ...)")


class KubernetesRunnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = Field(None, description="container image with cairn installed (required to use it)")
    namespace: str = "default"
    python: str = Field("python", description="python executable inside the image")
    gpus_per_worker: int = Field(1, ge=0)
    gpu_resource: str = "nvidia.com/gpu"
    cpu_request: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    service_account: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    image_pull_secrets: list[str] = Field(default_factory=list)
    db_url_secret: str | None = Field(None, description="Secret holding the job database URL for the pods")
    db_url_secret_key: str = "url"
    work_volume_claim: str | None = Field(None, description="PVC mounted at the work dir in every pod")
    ttl_seconds_after_finished: int | None = 86400


class JobsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    runner: RunnerKind = Field(RunnerKind.LOCAL, description="default runner: local, ray or kubernetes")
    runners: list[RunnerKind] = Field(
        default_factory=lambda: [RunnerKind.LOCAL],
        description="runners jobs may ask for (the default one is always included)",
    )
    max_concurrent: int = Field(1, ge=1, description="jobs running at once; more wait QUEUED")
    max_attempts: int = Field(3, ge=1, description="attempts per job before a lost runner fails it")
    poll_interval_s: float = Field(0.5, gt=0, description="how often runners' reports are read")
    liveness_interval_s: float = Field(5.0, gt=0, description="how often runners are checked for life")
    cancel_grace_s: float = Field(10.0, ge=0, description="seconds between SIGTERM and SIGKILL on cancel")
    ray: RayRunnerConfig = RayRunnerConfig()
    kubernetes: KubernetesRunnerConfig = KubernetesRunnerConfig()

    def runner_kinds(self) -> list[RunnerKind]:
        return list(dict.fromkeys([self.runner, *self.runners]))


class JobServiceConfig(ServiceConfig):
    """Settings of a service that runs jobs (trainer, quantizer). A subclass redeclares `root` with its
    own default directory, and its ports."""

    root: Path = Field(
        default_factory=lambda: cairn_home("jobs"),
        description="directory for the default job database and work dir ($CAIRN_HOME/<service>)",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the job database, e.g. postgresql+psycopg://user@host/db "
        "(default sqlite:///<root>/jobs.db); runners write progress to it, so they must reach it",
    )
    registry: str | None = Field(
        None, description="registry address for input models and results (default $CAIRN_REGISTRY or :50055)"
    )
    work_dir: Path | None = Field(
        None,
        description="checkpoints, outputs and runner logs, per job (default <root>/work); shared storage "
        "when jobs run on Ray or Kubernetes",
    )
    cache_dir: Path | None = Field(
        None, description="where runners cache input models (default $CAIRN_HOME/cache)"
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


def build_runners(
    config: JobsConfig, log_dir: Path, *, work_dir: Path | None = None
) -> dict[RunnerKind, Runner]:
    """The configured runners; local attempts write their output under `log_dir`. Kubernetes pods mount
    the work volume at `work_dir` (the service's work dir, which job settings name), so checkpoints are
    where every attempt looks."""
    runners: dict[RunnerKind, Runner] = {}
    for kind in config.runner_kinds():
        if kind == RunnerKind.LOCAL:
            from .runners.local import LocalRunner

            runners[kind] = LocalRunner(log_dir, python=sys.executable, cancel_grace_s=config.cancel_grace_s)
        elif kind == RunnerKind.RAY:
            from .runners.raycluster import RayRunner

            ray = config.ray
            runners[kind] = RayRunner(
                ray.address,
                namespace=ray.namespace,
                cpus_per_worker=ray.cpus_per_worker,
                gpus_per_worker=ray.gpus_per_worker,
                strategy=ray.strategy,
                cancel_grace_s=config.cancel_grace_s,
            )
        else:
            from .runners.k8s import KubernetesRunner

            k8s = config.kubernetes
            if not k8s.image:
                raise ValueError("the kubernetes runner needs jobs.kubernetes.image (with cairn installed)")
            runners[kind] = KubernetesRunner(
                **k8s.model_dump(exclude={"ttl_seconds_after_finished"}),
                ttl_seconds_after_finished=k8s.ttl_seconds_after_finished,
                **({"work_mount_path": str(work_dir)} if work_dir is not None else {}),
                cancel_grace_s=int(config.cancel_grace_s),
            )
    return runners
