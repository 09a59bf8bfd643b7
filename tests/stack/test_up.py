"""README command 1's core: `cairn up` brings up the registry holding the tiny model."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cairn.cli import main


def _start_up(home: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "CAIRN_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "cairn.cli", "up", "--registry-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        match = re.search(r"registry\s+(\S+:\d+)", line)
        if match:
            return proc, match.group(1)
    proc.wait(timeout=30)
    pytest.fail("cairn up exited before it was up:\n" + "".join(seen))


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def test_up_serves_the_tiny_model_and_stops_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, address = _start_up(tmp_path)
    try:
        capsys.readouterr()
        assert main(["registry", "ls", "--registry", address]) == 0
        listing = capsys.readouterr().out
        assert "tiny-llama" in listing and "production=1" in listing
        dest = tmp_path / "pulled"
        assert main(["registry", "pull", "tiny-llama@production", str(dest), "--registry", address]) == 0
        assert (dest / "config.json").is_file() and (dest / "tokenizer.json").is_file()
    finally:
        assert _stop(proc) == 0

    # A second start reuses the registry state instead of pushing a second version.
    proc, address = _start_up(tmp_path)
    try:
        capsys.readouterr()
        assert main(["registry", "ls", "tiny-llama", "--registry", address]) == 0
        versions = capsys.readouterr().out
        assert re.search(r"^\s*1\b", versions, re.M) and not re.search(r"^\s*2\b", versions, re.M)
    finally:
        assert _stop(proc) == 0
