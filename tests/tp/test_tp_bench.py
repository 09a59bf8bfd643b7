"""bench/tp.py on the CPU (gloo ranks): the run a multi-GPU lease depends on must not fail
there on a typo, and must record every size's decode and workload figures and HF's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "tp.py"


def test_tiny_run_at_one_and_two_ranks(tmp_path: Path, reference_workload_file: Path) -> None:
    out = tmp_path / "tp.json"
    command = [
        sys.executable,
        str(BENCH),
        "--tiny",
        "--tp",
        "1,2",
        "--workload",
        str(reference_workload_file),
        "--out",
        str(out),
    ]
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert finished.returncode == 0, finished.stderr[-4000:]
    tiny = json.loads(out.read_text())["models"]["tiny"]
    assert set(tiny["tp"]) == {"1", "2"}
    for entry in tiny["tp"].values():
        assert "error" not in entry, entry.get("traceback")
        assert entry["decode"]["batch1_decode_tokens_per_s"] > 0
        assert entry["workload"]["generated_tokens"] == 8 * 8
    assert (
        tiny["tp"]["2"]["decode"]["weight_bytes_per_rank"]
        < tiny["tp"]["1"]["decode"]["weight_bytes_per_rank"]
    )
    assert tiny["hf_device_map"]["batch1_tokens_per_s"] > 0
