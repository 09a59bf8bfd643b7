"""Spawn the data-parallel ranks of one attempt on this machine (what torchrun does, minus elastic).

The ranks share the launcher's process group, so a runner's signal to the
group reaches all of them; when one rank fails the others are stopped too,
since they would otherwise wait forever in their next collective.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

_POLL_S = 0.2
_STOP_GRACE_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_ranks(command: Sequence[str], nproc: int) -> int:
    """Run `command` as ranks 0..nproc-1; the first failing rank's status, or 0."""
    port = str(free_port())
    ranks = [
        subprocess.Popen(
            list(command),
            env={
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(nproc),
                "LOCAL_WORLD_SIZE": str(nproc),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
        )
        for rank in range(nproc)
    ]

    def forward(signum: int, _frame: object) -> None:
        for process in ranks:
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            codes = [p.poll() for p in ranks]
            failed = next((c for c in codes if c not in (None, 0)), None)
            if failed is not None:
                _stop(ranks)
                return failed
            if all(c == 0 for c in codes):
                return 0
            time.sleep(_POLL_S)
    finally:
        _stop(ranks)


def _stop(ranks: list[subprocess.Popen[bytes]]) -> None:
    for process in ranks:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + _STOP_GRACE_S
    for process in ranks:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
