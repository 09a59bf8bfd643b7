"""Which implementation a call reaches: Triton for CUDA/XPU tensors, else (or when forced) the reference."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import cairn.kernels
from cairn.kernels import dispatch, reference


def test_cpu_tensors_use_the_reference() -> None:
    assert cairn.kernels.backend_for(torch.zeros(1)) is reference


@pytest.fixture
def accelerator(monkeypatch, device, triton_ops) -> torch.device:
    """A device whose tensors dispatch to Triton: the GPU, or else the CPU with the interpreter
    standing in for an accelerator."""
    if device.type == "cpu":
        monkeypatch.setattr(dispatch, "_TRITON_DEVICE_TYPES", ("cpu",))
    return device


def test_force_reference_as_call_and_context_manager(accelerator, triton_ops) -> None:
    x = torch.zeros(1, device=accelerator)
    assert cairn.kernels.backend_for(x) is triton_ops
    with cairn.kernels.force_reference():
        assert cairn.kernels.reference_forced()
        assert cairn.kernels.backend_for(x) is reference
        with cairn.kernels.force_reference(False):
            assert cairn.kernels.backend_for(x) is triton_ops
        assert cairn.kernels.backend_for(x) is reference
    assert cairn.kernels.backend_for(x) is triton_ops
    cairn.kernels.force_reference(True)
    try:
        assert cairn.kernels.backend_for(x) is reference
    finally:
        cairn.kernels.force_reference(False)
    assert not cairn.kernels.reference_forced()


def test_public_functions_route_through_the_backend(accelerator) -> None:
    q = torch.randn(3, 2, 8, device=accelerator)
    k = torch.randn(3, 1, 8, device=accelerator)
    cache = cairn.kernels.build_rope_cache(8, 16, 10000.0, None, accelerator)
    positions = torch.tensor([0, 5, 9], device=accelerator)
    # The Triton rotary works in place and hands back its inputs; the reference returns new tensors.
    out_q, _ = cairn.kernels.apply_rotary(q, k, positions, cache)
    assert out_q is q
    with cairn.kernels.force_reference():
        out_q, _ = cairn.kernels.apply_rotary(q, k, positions, cache)
    assert out_q is not q


def _run_with_env(value: str) -> subprocess.CompletedProcess:
    code = "import cairn.kernels as k; print(k.reference_forced())"
    env = {**os.environ, "CAIRN_KERNELS": value}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(("value", "forced"), [("reference", "True"), ("auto", "False")])
def test_environment_variable_selects_mode(value: str, forced: str) -> None:
    result = _run_with_env(value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == forced


def test_environment_variable_rejects_unknown_mode() -> None:
    result = _run_with_env("fastest")
    assert result.returncode != 0
    assert "CAIRN_KERNELS must be one of" in result.stderr
