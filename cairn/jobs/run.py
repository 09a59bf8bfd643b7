"""The entry command every runner executes: `python -m cairn.jobs.run --job-id ID --attempt N --entry M:F`.

It reads the job from the store (URL in $CAIRN_JOBS_DB_URL), checks that this
attempt is still the job's current one, calls the entry function with a
`JobContext` and records the outcome: SUCCEEDED with the returned
`JobResult` (rank 0), FAILED with an actionable message (any rank). With
`--nproc N` (N > 1) and no RANK in the environment it first spawns the N
ranks on this machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cairn.common.errors import CairnError

from .context import JobContext, JobLost
from .launcher import spawn_ranks
from .records import JobResult
from .runners.base import DB_URL_ENV, SETTINGS_ENV
from .states import JobState
from .store import JobStore

logger = logging.getLogger("cairn.jobs.run")

EXIT_TERMINATED = 143


class Terminated(BaseException):
    """SIGTERM arrived (cancel or shutdown); a BaseException, so work's `except Exception` lets it pass."""


def load_entry(entry: str) -> Callable[[JobContext], JobResult]:
    module, _, name = entry.partition(":")
    if not module or not name:
        raise ValueError(f"entry {entry!r} is not of the form 'package.module:function'")
    return getattr(importlib.import_module(module), name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cairn.jobs.run", description=__doc__)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--entry", required=True, help="package.module:function taking a JobContext")
    parser.add_argument("--nproc", type=int, default=1, help="data-parallel ranks to spawn on this machine")
    args = parser.parse_args(argv)
    if args.nproc > 1 and "RANK" not in os.environ:
        argv_one = list(sys.argv[1:] if argv is None else argv)
        index = argv_one.index("--nproc")
        argv_one[index + 1] = "1"
        return spawn_ranks([sys.executable, "-m", "cairn.jobs.run", *argv_one], args.nproc)

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    store = JobStore(os.environ[DB_URL_ENV])
    try:
        return _run_rank(store, args.job_id, args.attempt, args.entry, rank)
    finally:
        store.close()


def _run_rank(store: JobStore, job_id: str, attempt: int, entry: str, rank: int) -> int:
    job = store.get(job_id)
    if job.state != JobState.RUNNING or job.attempts != attempt:
        logger.info("job %s is %s at attempt %d; attempt %d has nothing to do", job_id, job.state.name,
                    job.attempts, attempt)  # fmt: skip
        return 0
    settings: dict[str, Any] = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
    context = JobContext(
        store,
        job,
        attempt,
        settings,
        rank=rank,
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )

    def terminate(_signum: int, _frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    cairn_logger = logging.getLogger("cairn")
    try:
        with context.capture_logs(cairn_logger):
            result = load_entry(entry)(context)
        # After the logs' final flush, so a watcher has every line by the time it sees the end.
        if context.is_main:
            store.finish(job_id, attempt, JobState.SUCCEEDED, result=result)
        return 0
    except JobLost as e:
        logger.info("%s; stopping", e)
        return 0
    except Terminated:
        logger.info("terminated")
        return EXIT_TERMINATED
    except CairnError as e:
        logger.error("job failed: %s", e.message)
        context.fail(e.message)
        return 1
    except Exception as e:
        logger.exception("job failed")
        context.fail(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        return 1


if __name__ == "__main__":
    sys.exit(main())
