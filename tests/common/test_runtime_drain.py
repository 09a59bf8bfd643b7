"""Graceful shutdown of a real service process: SIGTERM drains in-flight calls, then exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from runtime_echo import SERVICE
from runtime_helpers import ProcessLog

from cairn.common.channel import make_channel

HERE = Path(__file__).parent


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime_drain_server", *args],
        cwd=HERE,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(params=["serve"])
def server_process(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[str], ProcessLog]]:
    proc = spawn(request.param, "--port", "0", "--shutdown-grace-s", "60")
    log = ProcessLog(proc.stderr)
    yield proc, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def start_slow_call(log: ProcessLog, release: Path) -> tuple[grpc.Channel, grpc.Future]:
    port = log.wait_for(lambda r: r["msg"].startswith("serving"))["port"]
    channel = make_channel(f"127.0.0.1:{port}", aio=False)
    slow = channel.unary_unary(f"/{SERVICE}/Echo").future(f"wait:{release}".encode(), timeout=120)
    log.wait_for(lambda r: r["msg"] == "waiting")
    return channel, slow


def new_call_fails(port: int) -> grpc.StatusCode | None:
    with make_channel(f"127.0.0.1:{port}", aio=False) as channel:
        try:
            channel.unary_unary(f"/{SERVICE}/Echo")(b"late", timeout=10)
        except grpc.RpcError as err:
            return err.code()
    return None


def test_sigterm_lets_the_in_flight_call_finish_and_refuses_new_ones(
    server_process: tuple[subprocess.Popen[str], ProcessLog], tmp_path: Path
) -> None:
    proc, log = server_process
    release = tmp_path / "release"
    channel, slow = start_slow_call(log, release)
    port = log.wait_for(lambda r: r["msg"].startswith("serving"))["port"]

    proc.send_signal(signal.SIGTERM)
    log.wait_for(lambda r: r["msg"].startswith("received SIGTERM"))
    # The log line comes just before the listener closes; a call may still slip in before it.
    refused = next((code for code in (new_call_fails(port) for _ in range(200)) if code is not None), None)
    assert refused == grpc.StatusCode.UNAVAILABLE
    assert not slow.done()

    release.touch()
    assert slow.result(timeout=60) == b"released"
    channel.close()
    assert proc.wait(timeout=60) == 0

    messages = [r["msg"] for r in log.records()]
    assert messages.index("resources opened") < messages.index("stopped") < messages.index("resources closed")
    assert all(r["service"] == "echo" for r in log.records())


@pytest.mark.parametrize("server_process", ["hooks"], indirect=True)
def test_second_signal_cancels_the_drain_and_hooks_still_run(
    server_process: tuple[subprocess.Popen[str], ProcessLog], tmp_path: Path
) -> None:
    proc, log = server_process
    channel, stuck = start_slow_call(log, tmp_path / "never")

    proc.send_signal(signal.SIGTERM)
    log.wait_for(lambda r: r["msg"].startswith("received SIGTERM"))
    proc.send_signal(signal.SIGINT)

    assert stuck.exception(timeout=60).code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    channel.close()
    assert proc.wait(timeout=60) == 0
    records = log.records()
    messages = [r["msg"] for r in records]
    assert messages.index("async hook ran") < messages.index("sync hook ran") < messages.index("stopped")
    assert any("hook failed" in r.get("exc", "") for r in records)


def test_bad_config_exits_2_with_the_message_not_a_traceback() -> None:
    proc = spawn("serve", "--port", "http")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "got 'http' from flag --port" in stderr
    assert "Traceback" not in stderr
