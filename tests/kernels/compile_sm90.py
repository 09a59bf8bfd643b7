"""Compiles every Triton kernel the engine launches for an H100/H200 (sm_90), without a GPU.

Run as a script with TRITON_INTERPRET unset. Each public launcher runs on small
CPU tensors with launches intercepted: the recorded arguments give the kernel's
signature and the specializations a real launch would get (integers equal to 1
become constants, pointers and integers divisible by 16 are marked so, unless
the kernel opts out), and
`triton.compile` then lowers it through TTIR, TTGIR, LLVM and PTX to a cubin
with the ptxas Triton ships. Prints one line per kernel variant; exits 1 if any
failed. The interpreter the CPU tests use cannot catch what only lowering does
(layouts, shared memory, atomics, pipelining).
"""

from __future__ import annotations

import os
import sys
import traceback

import torch

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("run without TRITON_INTERPRET: the kernels must be JIT functions, not interpreted ones")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from cairn.kernels import build_rope_cache, triton_ops

TARGET = GPUTarget("cuda", 90, 32)
_TYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
}
_OPTIONS = ("num_warps", "num_stages")


def _record() -> list[tuple[JITFunction, dict, dict]]:
    launches: list[tuple[JITFunction, dict, dict]] = []

    def launcher(kernel: JITFunction, grid: object) -> object:
        def launch(*args: object, **kwargs: object) -> None:
            bound = dict(zip(kernel.arg_names, args, strict=False)) | kwargs
            options = {name: bound.pop(name) for name in _OPTIONS if name in bound}
            launches.append((kernel, bound, options))

        return launch

    JITFunction.__getitem__ = launcher
    return launches


def _source(kernel: JITFunction, bound: dict) -> ASTSource:
    signature, constexprs, attrs = {}, {}, {}
    for index, name in enumerate(kernel.arg_names):
        value = bound[name]
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif (
            index in kernel.constexprs
            or isinstance(value, str | bool)
            or value is None
            or (value == 1 and not kernel.params[index].do_not_specialize)
        ):
            signature[name] = "constexpr"
            constexprs[(index,)] = value
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0 and not kernel.params[index].do_not_specialize:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)


def _shapes() -> None:
    """Runs every launcher at the Llama-3-8B and Qwen2.5-0.5B head layouts, bf16."""
    bf16 = torch.bfloat16
    for n_heads, n_kv_heads, head_dim in ((32, 8, 128), (14, 2, 64)):
        tokens, blocks, block_size = 4, 8, 16
        qkv = torch.randn(tokens, (n_heads + 2 * n_kv_heads) * head_dim, dtype=bf16)
        cache = torch.zeros(blocks, block_size, n_kv_heads, head_dim, dtype=bf16)
        rope = build_rope_cache(head_dim, 64, 10000.0, None, "cpu")
        positions = torch.arange(tokens, dtype=torch.int32)
        slots = torch.arange(tokens, dtype=torch.int32)
        for bias in (None, torch.randn(qkv.shape[1], dtype=bf16)):
            triton_ops.rotary_and_cache(qkv, positions, rope, cache, cache.clone(), slots, bias)
        q = torch.randn(tokens, n_heads, head_dim, dtype=bf16)
        tables = torch.zeros(tokens, blocks, dtype=torch.int32)
        seq_lens = torch.full((tokens,), 20, dtype=torch.int32)
        for splits in (1, 64):
            triton_ops.paged_decode_attention(q, cache, cache, tables, seq_lens, 0.1, num_splits=splits)
        starts = torch.tensor([0, 2, 4], dtype=torch.int32)
        triton_ops.prefill_attention(q, cache, cache, tables[:2], starts, seq_lens[:2], 0.1)
    hidden = torch.randn(2, 4096, dtype=bf16)
    triton_ops.rms_norm(hidden, torch.ones(4096, dtype=bf16), 1e-5, hidden.clone())
    triton_ops.rms_norm(hidden, torch.ones(4096, dtype=bf16), 1e-5)
    triton_ops.silu_and_mul(torch.randn(2, 2 * 14336, dtype=bf16))
    weight, norm = torch.randn(6144, 4096, dtype=bf16), torch.ones(4096, dtype=bf16)
    for block_n in (32, 64, 128):
        for split in (1, 4):
            tiles = {"block_n": block_n, "split_k": split}
            triton_ops.gemv(hidden[:1], weight, **tiles)
            triton_ops.rms_norm_gemv(hidden[:1], hidden[1:], norm, 1e-5, weight, **tiles)
    triton_ops.rms_norm_gemv(hidden[:1], None, norm, 1e-5, weight, block_n=64, split_k=4)
    triton_ops.silu_and_mul_gemv(torch.randn(1, 2 * 4096, dtype=bf16), weight, block_n=64, split_k=4)


def main() -> None:
    launches = _record()
    _shapes()
    seen, failed = set(), 0
    for kernel, bound, options in launches:
        source = _source(kernel, bound)
        constants = {kernel.arg_names[i]: v for (i,), v in source.constants.items()}
        key = (kernel.fn.__name__, repr(sorted(source.signature.items())), repr(sorted(constants.items())))
        if key in seen:
            continue
        seen.add(key)
        constants = {name: v for name, v in constants.items() if name.isupper()}
        try:
            compiled = triton.compile(source, target=TARGET, options=options)
            print(f"ok {kernel.fn.__name__} {constants} shared={compiled.metadata.shared}")
        except Exception:
            failed += 1
            print(f"FAILED {kernel.fn.__name__} {constants}\n{traceback.format_exc()}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
