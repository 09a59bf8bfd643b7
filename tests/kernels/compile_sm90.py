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

from cairn.kernels import build_rope_cache, quant_layout, triton_ops
from cairn.kernels.triton_ops import (
    quant_activation,
    quant_attention,
    quant_gemm,
    quant_kv_cache,
    quant_scaled_gemm,
)

TARGET = GPUTarget("cuda", 90, 32)
_TYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.int8: "i8",
    torch.float8_e4m3fn: "fp8e4nv",
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
            if not kernel.params[index].do_not_specialize:
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


def _quantized_shapes() -> None:
    """The quantized kernels (W4A16/W8A16, W8A8-INT8, INT8/FP8 KV cache) at the 8B layout."""
    bf16, fp8, int8 = torch.bfloat16, torch.float8_e4m3fn, torch.int8
    x = torch.randn(64, 4096, dtype=bf16)
    for codes_dtype in (int8, fp8):
        for static_scale in (None, torch.tensor([0.05])):
            quant_activation.quantize_activations(x, codes_dtype, static_scale)
    n, k, group = 256, 4096, 128
    for bits in (4, 8):
        qweight = quant_layout.pack_weight(torch.randint(0, 2**bits, (n, k), dtype=torch.int32), bits)
        scales = torch.rand(k // group, n)
        for zeros in (None, torch.rand(k // group, n)):
            for m, split_k in ((1, 4), (64, 1)):
                quant_gemm.weight_only_gemm(x[:m], qweight, scales, zeros, bits, group, split_k=split_k)
    x_codes, w_codes = torch.zeros(64, k, dtype=int8), torch.zeros(n, k, dtype=int8)
    for m in (1, 64):
        for x_scale, w_scale in ((torch.rand(m, 1), torch.rand(n)), (torch.rand(1), torch.rand(1))):
            quant_scaled_gemm.scaled_int8_gemm(x_codes[:m], x_scale, w_codes, w_scale, torch.rand(n), bf16)
    n_heads, n_kv_heads, head_dim, blocks, block_size, tokens = 32, 8, 128, 8, 16, 4
    k_new = torch.randn(tokens, n_kv_heads, head_dim, dtype=bf16)
    q = torch.randn(tokens, n_heads, head_dim, dtype=bf16)
    tables = torch.zeros(tokens, blocks, dtype=torch.int32)
    seq_lens = torch.full((tokens,), 20, dtype=torch.int32)
    slots = torch.arange(tokens, dtype=torch.int32)
    for cache_dtype in (int8, fp8):
        cache = torch.zeros(blocks, block_size, n_kv_heads, head_dim, dtype=cache_dtype)
        for scale in (torch.rand(blocks, block_size, n_kv_heads), torch.tensor([0.02])):
            quant_kv_cache.write_kv_cache_quant(k_new, k_new, cache, cache, scale, scale, slots)
            for splits in (1, 8):
                args = (q, cache, cache, scale, scale, tables, seq_lens, 0.1)
                quant_attention.paged_decode_attention_quant(*args, num_splits=splits)
            starts = torch.tensor([0, 2, 4], dtype=torch.int32)
            args = (q, cache, cache, scale, scale, tables[:2], starts, seq_lens[:2], 0.1)
            quant_attention.prefill_attention_quant(*args)


def main() -> None:
    launches = _record()
    _shapes()
    _quantized_shapes()
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
