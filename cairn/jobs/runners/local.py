"""Run attempts as child processes of the service's machine.

Each attempt gets its own session (process group), so a cancel reaches the
entry process and every rank it spawned, and the attempt outlives a service
restart: the next service finds it again by pid and process start time (pids
are reused, start times are not) instead of starting a duplicate.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..records import RunnerKind
from .base import Launch, RunnerStatus, tail


class LocalRunner:
    kind = RunnerKind.LOCAL

    def __init__(self, log_dir: Path, *, python: str = sys.executable, cancel_grace_s: float = 10.0) -> None:
        self.log_dir = Path(log_dir)
        self.python = python
        self.cancel_grace_s = cancel_grace_s
        self._host = socket.gethostname()
        self._lock = threading.Lock()
        # Children this process started, kept to reap them and read their exit codes.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, launch: Launch) -> dict[str, Any]:
        log = self.log_dir / launch.job_id / f"attempt-{launch.attempt}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            child = subprocess.Popen(
                launch.command(self.python),
                env={**os.environ, **launch.env()},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self._lock:
            self._children[child.pid] = child
        return {"host": self._host, "pid": child.pid, "started": _start_time(child.pid), "log": str(log)}

    def status(self, handle: dict[str, Any]) -> RunnerStatus:
        if handle.get("host") != self._host:
            # Another machine's child: only that machine's service can tell; assume it lives.
            return RunnerStatus(alive=True, detail=f"runs on {handle.get('host')}")
        pid = int(handle["pid"])
        with self._lock:
            child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return RunnerStatus(alive=True)
            return RunnerStatus(alive=False, exit_code=code, detail=self._ended(handle, code))
        if _same_process(pid, handle):
            return RunnerStatus(alive=True)
        return RunnerStatus(alive=False, detail=self._ended(handle, None))

    def cancel(self, handle: dict[str, Any]) -> None:
        if handle.get("host") != self._host:
            return
        pid = int(handle["pid"])
        if not self._running(pid, handle):
            self.release(handle)
            return
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cancel_grace_s
        while time.monotonic() < deadline and self._running(pid, handle):
            time.sleep(0.05)
        _signal_group(pid, signal.SIGKILL)
        self.release(handle)

    def release(self, handle: dict[str, Any]) -> None:
        with self._lock:
            child = self._children.pop(int(handle.get("pid", -1)), None)
        if child is not None:
            try:
                child.wait(timeout=self.cancel_grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)
                child.wait()

    def close(self) -> None:
        """Attempts keep running: the next service start reattaches to them."""

    def _running(self, pid: int, handle: dict[str, Any]) -> bool:
        with self._lock:
            child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        return _same_process(pid, handle)

    def _ended(self, handle: dict[str, Any], code: int | None) -> str:
        how = "with unknown status" if code is None else _describe_exit(code)
        try:
            output = Path(handle["log"]).read_text(errors="replace")
        except OSError:
            output = ""
        last = tail(output)
        return f"process {handle['pid']} exited {how}" + (f"; last output:\n{last}" if last else "")


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"on signal {signal.Signals(-code).name}"
        except ValueError:
            return f"on signal {-code}"
    return f"with status {code}"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _same_process(pid: int, handle: dict[str, Any]) -> bool:
    started = _start_time(pid)
    return started is not None and started == handle.get("started")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return _portable_start_time(pid)
    # The command name (field 2) may contain spaces; fields after it are plain.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _portable_start_time(pid: int) -> str | None:
    if sys.platform.startswith("linux"):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "unknown"
