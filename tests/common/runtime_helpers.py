"""Test plumbing shared by the runtime tests: a background event loop, log capture, free ports, waits."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar

R = TypeVar("R")


class LogCapture:
    """JSON log lines the runtime writes, parsed back into dicts."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessLog:
    """Collects a child's JSON log lines from its stderr on a thread, so the pipe never fills."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        """The first record matching `predicate`; the timeout only guards against a hung child."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((r for r in self.records() if predicate(r)), None)
            if found is not None:
                return found
            time.sleep(0.01)
        raise AssertionError("expected log line never came:\n" + "".join(self.lines))


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Poll until `condition` holds; the timeout only guards against hanging, it is not an assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)
