"""Job machinery fixtures: a SQLite store per test and managers whose local runner starts real children.

Children import the entry points in `jobs_work.py`; PYTHONPATH carries this
directory to them (and to Ray's workers, which inherit the environment).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_harness import ManagerFactory

from cairn.jobs.manager import JobManager
from cairn.jobs.records import RunnerKind
from cairn.jobs.runners.base import Runner
from cairn.jobs.runners.local import LocalRunner
from cairn.jobs.states import JobState
from cairn.jobs.store import JobStore

HERE = Path(__file__).parent
ENTRY = "jobs_work:stepper"

# The registry suite's throwaway PostgreSQL cluster, shared rather than copied.
sys.path.insert(0, str(HERE.parent / "registry"))
from registry_harness import PG_MISSING, PostgresCluster, create_database, find_pg_bindir  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def work_importable() -> Iterator[None]:
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), before) if p)
    yield
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[JobStore]:
    s = JobStore(db_url)
    yield s
    s.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the session: $CAIRN_TEST_PG_URL, else a throwaway local cluster."""
    if os.environ.get("CAIRN_TEST_PG_URL"):
        yield os.environ["CAIRN_TEST_PG_URL"]
        return
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.fail(PG_MISSING, pytrace=False)
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster.url()
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest, db_url: str) -> Iterator[JobStore]:
    """The store on SQLite, and on a fresh PostgreSQL database."""
    url = db_url if request.param == "sqlite" else create_database(request.getfixturevalue("postgres_url"))
    s = JobStore(url)
    yield s
    s.close()


@pytest.fixture
def make_manager(tmp_path: Path) -> Iterator[ManagerFactory]:
    """`make_manager(store, runners=None, **options)`: a started manager, stopped after the test."""
    started: list[JobManager] = []

    def make(
        store: JobStore, runners: dict[RunnerKind, Runner] | None = None, **options: object
    ) -> JobManager:
        if runners is None:
            runners = {RunnerKind.LOCAL: LocalRunner(tmp_path / "logs", cancel_grace_s=5)}
        manager = JobManager(
            store,
            kind="test",
            entry=options.pop("entry", ENTRY),
            runners=runners,
            default_runner=options.pop("default_runner", next(iter(runners))),
            id_prefix="t",
            poll_interval_s=0.05,
            liveness_interval_s=0.1,
            **options,
        )
        manager.start()
        started.append(manager)
        return manager

    yield make
    for manager in started:
        manager.stop()
        for job in manager.store.with_state("test", JobState.RUNNING):
            if job.handle is not None:
                manager.runners[job.runner].cancel(job.handle)
