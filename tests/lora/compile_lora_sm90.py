"""Compiles the batched LoRA kernels for an H100/H200 (sm_90) without a GPU, with the
machinery of tests/kernels/compile_sm90.py (run as a script, TRITON_INTERPRET unset)."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location(
    "compile_sm90", Path(__file__).resolve().parents[1] / "kernels" / "compile_sm90.py"
)
compile_sm90 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compile_sm90)

import triton  # noqa: E402

from cairn.kernels import triton_ops  # noqa: E402
from cairn.kernels.reference.lora import lora_segments  # noqa: E402


def _shapes() -> None:
    """Llama-3-8B's projections with 8 rank-16 adapters, bf16: decode-size and prefill-size batches."""
    bf16 = torch.bfloat16
    slots, rank = 8, 16
    projections = {  # in features, slice offsets
        "qkv": (4096, [0, 4096, 5120, 6144]),
        "o": (4096, [0, 4096]),
        "gate_up": (4096, [0, 14336, 28672]),
        "down": (14336, [0, 4096]),
    }
    for tokens in (8, 1024):
        token_slots = torch.arange(tokens, dtype=torch.int32) % (slots + 1) - 1
        order, starts = lora_segments(token_slots, slots)
        for k, offsets in projections.values():
            x = torch.zeros(tokens, k, dtype=bf16)
            a = torch.zeros(slots, len(offsets) - 1, rank, k, dtype=bf16)
            b = torch.zeros(slots, offsets[-1], rank, dtype=bf16)
            triton_ops.add_lora(torch.zeros(tokens, offsets[-1], dtype=bf16), x, a, b, order, starts, offsets)


def main() -> None:
    launches = compile_sm90._record()
    _shapes()
    seen, failed = set(), 0
    for kernel, bound, options in launches:
        source = compile_sm90._source(kernel, bound)
        constants = {kernel.arg_names[i]: v for (i,), v in source.constants.items()}
        key = (kernel.fn.__name__, repr(sorted(source.signature.items())), repr(sorted(constants.items())))
        if key in seen:
            continue
        seen.add(key)
        constants = {name: v for name, v in constants.items() if name.isupper()}
        try:
            compiled = triton.compile(source, target=compile_sm90.TARGET, options=options)
            print(f"ok {kernel.fn.__name__} {constants} shared={compiled.metadata.shared}")
        except Exception:
            failed += 1
            print(f"FAILED {kernel.fn.__name__} {constants}\n{traceback.format_exc()}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
