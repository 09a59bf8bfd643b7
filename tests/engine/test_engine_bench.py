"""bench/engine_decode.py on the CPU: the run a short GPU lease depends on must not fail there
on a typo, and its kernel table must read a CUDA profile correctly."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "engine_decode.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("engine_decode_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_run_with_every_variant(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "engine_decode.json"
    variants = ["--profile", "--compile", "--gemv"]
    bench.main(["--tiny", "--skip-hf", "--repeats", "1", *variants, "--out", str(out)])
    result = json.loads(out.read_text())
    tiny = result["models"]["tiny"]
    assert tiny["batch1_decode_tokens_per_s"] > 0
    (table,) = tiny["profile"].values()  # no CUDA graphs on the CPU: the eager table only
    assert table["kernels"] and table["kernels"][0]["total_us"] > 0
    assert sum(row["share"] for row in table["kernels"]) == pytest.approx(1.0, abs=0.01)
    assert tiny["compiled"]["batch1_decode_tokens_per_s"] > 0
    assert tiny["triton_gemv"]["batch1_decode_tokens_per_s"] > 0
    phases = {"tiny/runner_setup", "tiny/batch1_decode", "tiny/profile", "tiny/compiled", "total"}
    assert phases <= set(result["phase_seconds"])


def _kernel(name: str, start: float, end: float) -> SimpleNamespace:
    span = SimpleNamespace(start=start, end=end, elapsed_us=lambda: end - start)
    return SimpleNamespace(name=name, device_type=DeviceType.CUDA, time_range=span)


def test_kernel_table_of_a_cuda_profile(bench: ModuleType) -> None:
    # Two steps: in each, three kernels 2 us apart inside a graph, then 50 us waiting for the host.
    events = [
        _kernel("sm90_xmma_gemm_bf16", 0, 10),
        _kernel("_rms_norm_kernel", 12, 14),
        _kernel("_decode_kernel", 16, 20),
        _kernel("sm90_xmma_gemm_bf16", 70, 80),
        _kernel("_rms_norm_kernel", 82, 84),
        _kernel("_decode_kernel", 86, 90),
        SimpleNamespace(name="cudaGraphLaunch", device_type=DeviceType.CPU),
    ]
    table = bench.kernel_table(events, torch.device("cuda", 0), steps=2)
    assert table["kernels_per_step"] == 3
    assert table["kernel_us_per_step"] == 16
    assert table["us_per_step_by_family"] == {"gemm": 10, "attention": 4, "rms_norm": 2}
    assert table["gap_us_per_step_under_20us"] == 4
    assert table["gap_us_per_step_20us_and_over"] == 25
    names = [row["name"] for row in table["kernels"]]
    assert names == ["sm90_xmma_gemm_bf16", "_decode_kernel", "_rms_norm_kernel"]
    assert table["kernels"][0] == {"name": "sm90_xmma_gemm_bf16", "count": 2, "total_us": 20, "share": 0.625}
