"""Fixtures for the service runtime tests: a real grpc.aio server on loopback.

The server runs on an event loop in a background thread, so tests talk to it
with ordinary blocking clients and can still run coroutines on its loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from loopback import LoopThread
from runtime_echo import EchoConfig, echo_service
from runtime_helpers import LogCapture, free_port

from cairn.common.channel import make_channel
from cairn.common.logging import ContextFilter, JsonFormatter
from cairn.common.server import RunningServer, start_server


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def logs() -> Iterator[LogCapture]:
    """JSON lines of every `cairn.*` logger, without touching the root logger other suites share."""
    capture = LogCapture()
    handler = logging.StreamHandler(capture.stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter("echo"))
    cairn_logger = logging.getLogger("cairn")
    level = cairn_logger.level
    cairn_logger.addHandler(handler)
    cairn_logger.setLevel(logging.INFO)
    yield capture
    cairn_logger.removeHandler(handler)
    cairn_logger.setLevel(level)


@pytest.fixture(scope="session")
def echo_server(loop_thread: LoopThread, logs: LogCapture) -> Iterator[RunningServer]:
    config = EchoConfig(metrics_port=free_port())
    running = loop_thread.run(start_server(config, [echo_service()]))
    yield running
    loop_thread.run(running.stop(0))


@pytest.fixture(scope="session")
def echo_channel(echo_server: RunningServer) -> Iterator[grpc.Channel]:
    channel = make_channel(f"127.0.0.1:{echo_server.port}", aio=False)
    yield channel
    channel.close()
