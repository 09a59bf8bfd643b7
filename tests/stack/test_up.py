"""README command 1's core: `cairn up` brings up the registry holding the tiny model and a
scheduler serving it from the registry on a local Ray worker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cairn.cli import main
from cairn.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc


def _start_up(home: Path) -> tuple[subprocess.Popen[str], str, str]:
    """Starts `cairn up`; returns the process and the registry and scheduler addresses."""
    env = {**os.environ, "CAIRN_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "cairn.cli",
            "up",
            *(f"--{s}-port=0" for s in ("registry", "scheduler", "tokenizer", "router", "http")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen = []
    addresses = {}
    for line in proc.stdout:
        seen.append(line)
        match = re.search(r"(registry|scheduler)\s+(\S+:\d+)", line)
        if match:
            addresses[match.group(1)] = match.group(2)
        if len(addresses) == 2:
            return proc, addresses["registry"], addresses["scheduler"]
    proc.wait(timeout=30)
    pytest.fail("cairn up exited before it was up:\n" + "".join(seen))


def _check_scheduler(address: str) -> None:
    """The scheduler serves the tiny model: GetInfo describes it and a request streams tokens."""
    with grpc.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        info = stub.GetInfo(scheduler_pb2.SchedulerInfoRequest())
        assert (info.deployment, info.vocab_size, info.max_model_len) == ("tiny-llama", 2048, 2048)
        request = scheduler_pb2.ScheduleRequest(
            prompt_token_ids=[5, 6, 7],
            sampling=common_pb2.SamplingParams(temperature=0.0),
            stop=common_pb2.StopCriteria(max_tokens=4, ignore_eos=True),
        )
        responses = list(stub.Generate(request))
        assert responses[-1].usage.completion_tokens == 4


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def test_up_serves_the_tiny_model_and_stops_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, address, scheduler = _start_up(tmp_path)
    try:
        _check_scheduler(scheduler)
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
    proc, address, scheduler = _start_up(tmp_path)
    try:
        _check_scheduler(scheduler)
        capsys.readouterr()
        assert main(["registry", "ls", "tiny-llama", "--registry", address]) == 0
        versions = capsys.readouterr().out
        assert re.search(r"^\s*1\b", versions, re.M) and not re.search(r"^\s*2\b", versions, re.M)
    finally:
        assert _stop(proc) == 0
