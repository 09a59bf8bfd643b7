"""`cairn router serve` as a real process: configured from flags and env, serving both APIs, and
leaving on SIGTERM after its drain."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from typing import Any

import grpc
import httpx2 as httpx
import pytest

from cairn.v1 import inference_pb2, inference_pb2_grpc


def test_router_serve_runs_both_apis_and_drains_on_sigterm(backends: dict[str, Any]) -> None:
    deployments = json.dumps({"tiny": backends["deployments"]["tiny"]})
    env = {
        **os.environ,
        "CAIRN_ROUTER_TOKENIZER_ADDRESS": backends["tokenizer_address"],
        "CAIRN_ROUTER_API_KEYS": "[sk-serve-test]",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable, "-P", "-m", "cairn.cli", "router", "serve",
            "--port=0", "--http-port=0", "--metrics-port=0", "--log-format=text", "--shutdown-grace-s=2",
            f"--deployments={deployments}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )  # fmt: skip
    seen, grpc_address, http_url = [], "", ""
    try:
        for line in proc.stdout:
            seen.append(line)
            if match := re.search(r"serving cairn\.v1\.Inference on (\S+:\d+)", line):
                grpc_address = match.group(1)
            if match := re.search(r"HTTP API on (http://\S+:\d+)/v1", line):
                http_url = match.group(1)
            if grpc_address and http_url:
                break
        else:
            pytest.fail("cairn router serve exited before serving:\n" + "".join(seen))

        auth = {"Authorization": "Bearer sk-serve-test"}
        with httpx.Client(base_url=http_url, timeout=60) as http:
            body = {"model": "tiny", "prompt": "Hello", "max_tokens": 3}
            assert http.post("/v1/completions", json=body).status_code == 401
            assert (
                http.post("/v1/completions", json=body, headers=auth).json()["usage"]["completion_tokens"]
                == 3
            )
        with grpc.insecure_channel(grpc_address) as channel:
            models = inference_pb2_grpc.InferenceStub(channel).ListModels(
                inference_pb2.ListServedModelsRequest(), metadata=(("authorization", "Bearer sk-serve-test"),)
            )
        assert [m.id for m in models.models] == ["tiny"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(seen) + proc.stdout.read()
