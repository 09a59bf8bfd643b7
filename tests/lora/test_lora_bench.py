"""bench/lora.py on the CPU: the H200 run depends on it not failing on a typo."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "lora.py"


def test_tiny_run_with_every_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference_workload_file: Path
) -> None:
    monkeypatch.syspath_prepend(str(BENCH.parent))  # it imports its sibling scripts
    spec = importlib.util.spec_from_file_location("lora_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    out = tmp_path / "lora.json"
    bench.main(["--tiny", "--workload", str(reference_workload_file), "--out", str(out)])
    tiny = json.loads(out.read_text())["models"]["tiny"]
    for variant in bench.VARIANTS:
        assert tiny[variant]["generated_tokens"] == 16 * 8
    assert tiny["lora-mixed"]["adapters"] == 8 and tiny["base"]["adapters"] == 0
    assert tiny["lora-mixed_vs_base"] > 0
