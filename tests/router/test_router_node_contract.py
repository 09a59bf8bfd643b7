"""The Node.js contract test (tests/node/router.test.mjs): grpc-js streams a generation from the router."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import grpc_tools
import pytest
from router_harness import Router

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"


def test_node_client_streams_a_generation(router: Router) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not installed: install the Debian packages nodejs and npm (scripts/test.sh does)"
        )
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(
            "tests/node/node_modules is missing: run `npm ci --prefix tests/node` (scripts/test.sh does)"
        )
    env = {
        **os.environ,
        "CAIRN_ROUTER_ADDR": router.address,
        "CAIRN_ROUTER_MODEL": "tiny",
        "CAIRN_PROTO_INCLUDE": str(Path(grpc_tools.__file__).parent / "_proto"),
    }
    result = subprocess.run(
        [node, "--test", "tests/node/router.test.mjs"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert re.search(r"^# pass 3$", result.stdout, re.MULTILINE), report
    assert re.search(r"^# (fail|skipped) 0$", result.stdout, re.MULTILINE), report
