"""bench/tp.py on the CPU (gloo ranks): the run a multi-GPU lease depends on must not fail
there on a typo, and must record every size's decode and workload figures and HF's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "tp.py"

# The reference workload's interface (the real module lives outside the repository).
WORKLOAD = """
import torch


def reference_workload(n=512, seed=0, vocab=32000, output_len=256):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 40, (n,), generator=g).tolist()
    return [torch.randint(10, vocab - 10, (k,), generator=g).tolist() for k in lengths], output_len
"""


def test_tiny_run_at_one_and_two_ranks(tmp_path: Path) -> None:
    workload = tmp_path / "workload.py"
    workload.write_text(WORKLOAD)
    out = tmp_path / "tp.json"
    command = [
        sys.executable,
        str(BENCH),
        "--tiny",
        "--tp",
        "1,2",
        "--workload",
        str(workload),
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
