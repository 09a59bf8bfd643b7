"""The batched LoRA kernels compile for sm_90 on a machine without a GPU (see compile_lora_sm90.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).with_name("compile_lora_sm90.py")


def test_lora_kernels_compile_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, check=False, timeout=600
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    compiled = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok ")]
    # Two token-tile sizes (decode, prefill); expand also specializes one slice apart from two or three.
    counts = {name: compiled.count(name) for name in set(compiled)}
    assert counts == {"_shrink_kernel": 2, "_expand_kernel": 4}
