"""What the job store hands out: plain, immutable records."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .states import JobState


class RunnerKind(str, enum.Enum):
    """Where a job runs; the values are what configs and the store use."""

    LOCAL = "local"
    RAY = "ray"
    KUBERNETES = "kubernetes"


@dataclass(frozen=True)
class Progress:
    """One progress report; mirrors `cairn.v1.JobProgress`."""

    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    eval_loss: float | None = None
    epoch: float | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Checkpoint:
    """The newest checkpoint a resume starts from; `path` is on storage every runner can reach."""

    step: int
    path: str


@dataclass(frozen=True)
class JobResult:
    """What finished work returns: the registry version it published and its final metrics."""

    model: str = ""
    version: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobResult:
        return cls(
            model=data.get("model", ""),
            version=int(data.get("version", 0)),
            metrics=dict(data.get("metrics", {})),
            details=dict(data.get("details", {})),
        )


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    spec: dict[str, Any]
    state: JobState
    runner: RunnerKind
    progress: Progress
    error: str
    attempts: int
    checkpoint: Checkpoint | None
    result: JobResult | None
    labels: dict[str, str]
    # Runner-specific identity of the current attempt (pid, Ray actors, Kubernetes Job name).
    handle: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # Bumped by every change, so watchers can tell what they have already seen.
    revision: int
    # Insertion order: newest first listing and page tokens.
    seq: int


@dataclass(frozen=True)
class LogLine:
    id: int
    job_id: str
    attempt: int
    line: str
