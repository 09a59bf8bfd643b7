"""The runner contract: start an attempt, tell whether it still runs, stop it, free what it held.

Every runner executes the same entry command (`launch.command(python)`);
what differs is where the processes live and how the manager finds them
again. A handle is a JSON-able dict stored with the job, so a restarted
service can reattach to the attempts its predecessor started.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..records import RunnerKind

# Environment of every job process: the store's URL and the service's settings for the work.
DB_URL_ENV = "CAIRN_JOBS_DB_URL"
SETTINGS_ENV = "CAIRN_JOBS_SETTINGS"
ENTRY_MODULE = "cairn.jobs.run"


@dataclass(frozen=True)
class Launch:
    """One attempt of one job, as a runner needs it."""

    job_id: str
    kind: str
    attempt: int
    # "module:function" taking a JobContext.
    entry: str
    db_url: str
    settings: dict[str, Any] = field(default_factory=dict)
    # Data-parallel ranks.
    num_workers: int = 1

    def command(self, python: str, nproc: int | None = None) -> list[str]:
        """The entry command; `nproc` ranks are spawned by it locally (default: all of them)."""
        return [
            python, "-m", ENTRY_MODULE,
            "--job-id", self.job_id,
            "--attempt", str(self.attempt),
            "--entry", self.entry,
            "--nproc", str(self.num_workers if nproc is None else nproc),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return {DB_URL_ENV: self.db_url, SETTINGS_ENV: json.dumps(self.settings, sort_keys=True)}

    @property
    def name(self) -> str:
        """A DNS-safe name for this attempt's resources."""
        return f"cairn-{self.kind}-{self.job_id}-a{self.attempt}".lower()


@dataclass(frozen=True)
class RunnerStatus:
    alive: bool
    # Exit status when known (0 only if every process succeeded).
    exit_code: int | None = None
    # Why it ended, with the last lines it printed, for the job's error.
    detail: str = ""


class Runner(Protocol):
    kind: RunnerKind

    def start(self, launch: Launch) -> dict[str, Any]:
        """Start the attempt without waiting for it; returns its handle."""
        ...

    def status(self, handle: dict[str, Any]) -> RunnerStatus: ...

    def cancel(self, handle: dict[str, Any]) -> None:
        """Stop the attempt: a polite signal, then force after a grace period."""
        ...

    def release(self, handle: dict[str, Any]) -> None:
        """Free what a finished attempt still holds (actors, placement groups, process entries)."""
        ...

    def close(self) -> None: ...


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
