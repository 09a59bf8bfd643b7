"""Every Triton kernel the engine launches compiles for sm_90 (H100/H200) on a machine without a GPU.

The interpreter runs the kernels' arithmetic on the CPU but never lowers them, so errors that only
lowering meets (layouts, shared memory, atomics, pipelining) would otherwise first show on the GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).with_name("compile_sm90.py")
KERNELS = {
    "_rotary_cache_kernel": 4,
    "_decode_kernel": 4,
    "_merge_splits_kernel": 1,
    "_prefill_kernel": 2,
    "_rms_norm_kernel": 2,
    "_silu_and_mul_kernel": 1,
    "_gemv_kernel": 8,
    # quantized serving (W4A16/W8A16, W8A8-INT8, INT8/FP8 activations and KV cache)
    "_quantize_rows_kernel": 4,
    "_weight_only_gemm_kernel": 8,
    "_scaled_int8_gemm_kernel": 4,
    "_write_kv_quant_kernel": 4,
    "_decode_quant_kernel": 8,
    "_prefill_quant_kernel": 4,
}


def test_kernels_compile_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, check=False, timeout=600
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    compiled = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("ok ")]
    assert {name: compiled.count(name) for name in KERNELS} == KERNELS
