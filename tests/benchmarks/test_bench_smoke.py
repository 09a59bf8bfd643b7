"""The engine benchmarks' CPU smoke runs: a short GPU lease depends on these scripts not failing on a
typo, and on their JSON carrying the provenance and the figures the README tables are built from."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their siblings
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def check_provenance(results: dict) -> None:
    assert results["commit"] and results["command"] and results["date"]
    assert results["machine"]["device"] == "cpu" and results["settings"]["tiny"] is True


def test_throughput(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference_workload_file: Path) -> None:
    out = tmp_path / "throughput.json"
    load("throughput", monkeypatch).main(
        ["--tiny", "--skip-hf", "--workload", str(reference_workload_file), "--out", str(out)]
    )
    results = json.loads(out.read_text())
    check_provenance(results)
    tiny = results["models"]["tiny"]
    assert tiny["engine"]["generated_tokens"] > 0 and tiny["engine"]["output_tokens_per_s"] > 0


def test_quantized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference_workload_file: Path) -> None:
    out = tmp_path / "quantized.json"
    variants = "bf16,w8a16,w4a16,kv_int8"
    workload = str(reference_workload_file)
    load("quantized", monkeypatch).main(
        ["--tiny", "--variants", variants, "--workload", workload, "--out", str(out)]
    )
    results = json.loads(out.read_text())
    check_provenance(results)
    for name, variant in results["variants"].items():
        assert "error" not in variant, (name, variant.get("error"))
