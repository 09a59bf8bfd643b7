"""README command 1's `cairn up` as a test fixture runs it: a fresh home, free ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_BANNER_LINE = re.compile(r"\s+(registry|tokenizer|scheduler|router|openai api|lora adapters)\s+(\S+)")


@contextmanager
def cairn_up(home: Path, *args: str) -> Iterator[tuple[dict[str, str], str]]:
    """Starts `cairn up [args]` with CAIRN_HOME `home`, every port free; yields the addresses its
    banner lists (by label: "router", "openai api", ...) and the banner. Stops it with SIGTERM,
    which it must answer by exiting 0."""
    ports = [f"--{s}-port=0" for s in ("registry", "tokenizer", "scheduler", "router", "http")]
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "cairn.cli", "up", *ports, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "CAIRN_HOME": str(home), "PYTHONUNBUFFERED": "1"},
    )
    seen, addresses = [], {}
    for line in proc.stdout:
        seen.append(line)
        match = _BANNER_LINE.match(line)
        if match:
            addresses[match.group(1)] = match.group(2)
        if "Ctrl-C stops every service" in line:
            break
    else:
        proc.wait(timeout=30)
        pytest.fail("cairn up exited before it was up:\n" + "".join(seen))
    try:
        yield addresses, "".join(seen)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
