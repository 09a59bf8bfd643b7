"""The job state machine: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED.

Values equal the `cairn.v1.JobState` enum numbers, so converting is `int(state)`.
"""

from __future__ import annotations

import enum

from cairn.common.errors import FailedPrecondition


class JobState(enum.IntEnum):
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# RUNNING -> QUEUED: the runner died and the job waits to resume from its last
# checkpoint. FAILED/CANCELLED -> QUEUED: an explicit resume.
_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}


def check_transition(job_id: str, current: JobState, target: JobState) -> None:
    """Raise FailedPrecondition unless `current -> target` is a legal move."""
    if target not in _ALLOWED[current]:
        raise FailedPrecondition(
            f"job {job_id} is {current.name}; it cannot become {target.name}"
            + (" (it has finished)" if current.terminal and target != JobState.QUEUED else "")
        )
