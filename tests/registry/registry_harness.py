"""Test plumbing for the registry suite: a throwaway PostgreSQL cluster and a registry server on loopback."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from cairn.common.server import RunningServer, start_server
from cairn.services.registry.config import RegistryConfig
from cairn.services.registry.server import registry_services

PG_MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found, so the registry's PostgreSQL "
    "tests cannot run. Install the Debian package `postgresql` (scripts/test.sh does), or point "
    "CAIRN_TEST_PG_BINDIR at the directory holding initdb, or set CAIRN_TEST_PG_URL to an existing server "
    "(postgresql://user@host:port/db, a user allowed to CREATE DATABASE)."
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_pg_bindir() -> Path | None:
    """$CAIRN_TEST_PG_BINDIR (only it, when set), else `pg_config --bindir`, else the newest
    /usr/lib/postgresql/*/bin, else wherever `initdb` on PATH lives."""
    if os.environ.get("CAIRN_TEST_PG_BINDIR"):
        candidates = [Path(os.environ["CAIRN_TEST_PG_BINDIR"])]
    else:
        candidates = []
        pg_config = shutil.which("pg_config")
        if pg_config:
            result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
            candidates.append(Path(result.stdout.strip()))
        installed = glob.glob("/usr/lib/postgresql/*/bin")
        candidates += [
            Path(p) for p in sorted(installed, key=lambda p: int(Path(p).parent.name), reverse=True)
        ]
        initdb = shutil.which("initdb")
        if initdb:
            candidates.append(Path(os.path.realpath(initdb)).parent)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


class PostgresCluster:
    """initdb + pg_ctl into a temporary directory, on a free loopback port, trust auth, no fsync.

    PostgreSQL refuses to run as root, so under root the cluster belongs to the
    `postgres` system user and its commands run through runuser.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="cairn-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as_user, *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}\n{tail}")

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "cairn", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        for attempt in range(3):
            self.port = free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"),
                    "-w", "-t", "60", "-o", options, "start",
                )  # fmt: skip
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://cairn@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def create_database(server_url: str) -> str:
    """A fresh, uniquely named database on the server at `server_url`; returns its URL."""
    import psycopg
    import sqlalchemy as sa

    url = sa.make_url(server_url).set(drivername="postgresql")
    name = f"cairn_registry_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)


class RegistryServer:
    """The registry service, on its own event loop thread, bound to an ephemeral loopback port."""

    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="registry-server", daemon=True)
        self._thread.start()
        self._services: AbstractAsyncContextManager[Any] = registry_services(config)
        self.running: RunningServer = self._call(self._start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    async def _start(self) -> RunningServer:
        services = await self._services.__aenter__()
        return await start_server(self.config, services)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        self._call(self.running.stop(None))
        self._call(self._services.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until `condition()` holds; for effects the server finishes after the call returned."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)
