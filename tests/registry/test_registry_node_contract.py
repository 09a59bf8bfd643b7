"""The Node.js contract test (tests/node) against this session's registry server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import grpc_tools
import pytest
from registry_harness import RegistryServer

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"


def test_node_client_speaks_the_registry_contract(registry_server: RegistryServer) -> None:
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
        "CAIRN_REGISTRY_ADDR": registry_server.address,
        "CAIRN_PROTO_INCLUDE": str(Path(grpc_tools.__file__).parent / "_proto"),
    }
    result = subprocess.run(
        [node, "--test", "tests/node/"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    passed = re.search(r"^# pass (\d+)$", result.stdout, re.MULTILINE)
    assert passed and int(passed.group(1)) >= 2, report
    assert re.search(r"^# fail 0$", result.stdout, re.MULTILINE), report
