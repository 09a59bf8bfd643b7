"""Every service runs on the common runtime: started as its real `cairn <svc> serve`
process, each answers gRPC health checks, lists its services through
reflection, exposes per-RPC metrics, logs JSON carrying the caller's request id,
and drains and exits 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cairn.v1 import (
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    quantizer_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
    trainer_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

REQUEST_ID = "test-request-id-0123"


@dataclass
class ServiceCase:
    name: str
    grpc_service: str
    # A call that fails inside the service's own logic (so the runtime logs it with the request id).
    failing_call: Callable[[grpc.Channel, tuple[tuple[str, str], ...]], Any]
    expected_code: grpc.StatusCode
    # Extra flags, given a scratch directory and the tiny model's directory.
    args: Callable[[Path, Path], list[str]] = field(default=lambda tmp, model: [])


CASES = [
    ServiceCase(
        "registry",
        "cairn.v1.Registry",
        lambda ch, md: registry_pb2_grpc.RegistryStub(ch).GetModel(
            registry_pb2.GetModelRequest(name="no-such-model"), metadata=md
        ),
        grpc.StatusCode.NOT_FOUND,
        lambda tmp, model: ["--root", str(tmp / "registry")],
    ),
    ServiceCase(
        "tokenizer",
        "cairn.v1.Tokenizer",
        lambda ch, md: tokenizer_pb2_grpc.TokenizerStub(ch).Encode(
            tokenizer_pb2.EncodeRequest(), metadata=md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    ServiceCase(
        "worker",
        "cairn.v1.Worker",
        lambda ch, md: worker_pb2_grpc.WorkerStub(ch).Step(worker_pb2.StepRequest(), metadata=md),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    ServiceCase(
        "scheduler",
        "cairn.v1.Scheduler",
        lambda ch, md: list(
            scheduler_pb2_grpc.SchedulerStub(ch).Generate(scheduler_pb2.ScheduleRequest(), metadata=md)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda tmp, model: [
            "--model",
            str(model),
            "--device",
            "cpu",
            "--num-workers",
            "1",
            "--num-blocks",
            "64",
        ],
    ),
    ServiceCase(
        "trainer",
        "cairn.v1.Trainer",
        lambda ch, md: trainer_pb2_grpc.TrainerStub(ch).GetJob(
            common_pb2.JobId(job_id="no-such-job"), metadata=md
        ),
        grpc.StatusCode.NOT_FOUND,
    ),
    ServiceCase(
        "quantizer",
        "cairn.v1.Quantizer",
        lambda ch, md: quantizer_pb2_grpc.QuantizerStub(ch).GetJob(
            common_pb2.JobId(job_id="no-such-job"), metadata=md
        ),
        grpc.StatusCode.NOT_FOUND,
    ),
    ServiceCase(
        "router",
        "cairn.v1.Inference",
        lambda ch, md: inference_pb2_grpc.InferenceStub(ch).Generate(
            inference_pb2.GenerateRequest(model="no-such-model", text="hi"), metadata=md
        ),
        grpc.StatusCode.NOT_FOUND,
        lambda tmp, model: ["--http-port", str(_free_port())],
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Lines:
    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def json_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def join(self) -> None:
        self._thread.join(timeout=10)


def _wait_serving(channel: grpc.Channel, proc: subprocess.Popen[str], logs: _Lines) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            logs.join()
            pytest.fail(f"service exited with {proc.returncode}:\n{''.join(logs.lines)}")
        try:
            if (
                health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                == health_pb2.HealthCheckResponse.SERVING
            ):
                return
        except grpc.RpcError:
            time.sleep(0.2)
    pytest.fail("service did not become SERVING:\n" + "".join(logs.lines))


def _metrics_after_call(metrics_port: int, grpc_service: str) -> list[str]:
    """The metrics page once the failed call is counted: the client can see the
    status a moment before the server-side interceptor records it."""
    label = f'service="{grpc_service}"'
    for _ in range(100):
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        lines = page.splitlines()
        counted = [
            any(line.startswith(metric) and label in line for line in lines)
            for metric in ("cairn_grpc_requests_total", "cairn_grpc_errors_total")
        ]
        if all(counted):
            return lines
        time.sleep(0.1)
    pytest.fail(f"no cairn_grpc_requests_total / cairn_grpc_errors_total for {grpc_service}:\n{page}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_service_runs_on_the_common_runtime(case: ServiceCase, tmp_path: Path, tiny_model_dir: Path) -> None:
    port, metrics_port = _free_port(), _free_port()
    env = {**os.environ, "CAIRN_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-P", "-m", "cairn.cli", case.name, "serve",
        "--port", str(port), "--metrics-port", str(metrics_port), "--log-format", "json",
        *case.args(tmp_path, tiny_model_dir),
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = _Lines(proc.stdout)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        _wait_serving(channel, proc, logs)
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=case.grpc_service)
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        listed = {s.name for r in responses for s in r.list_services_response.service}
        assert {case.grpc_service, "grpc.health.v1.Health"} <= listed

        with pytest.raises(grpc.RpcError) as err:
            case.failing_call(channel, (("x-request-id", REQUEST_ID),))
        assert err.value.code() == case.expected_code

        page = _metrics_after_call(metrics_port, case.grpc_service)
        assert any(line.startswith("cairn_grpc_request_duration_seconds_bucket") for line in page)
    finally:
        channel.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        logs.join()
    assert code == 0, "".join(logs.lines)
    records = logs.json_records()
    assert records, "no JSON log lines:\n" + "".join(logs.lines)
    tagged = [r for r in records if r.get("request_id") == REQUEST_ID]
    assert tagged, "no log line carries the caller's request id:\n" + "".join(logs.lines)
