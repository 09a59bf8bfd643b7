"""Times the Triton kernels on one GPU at the Llama-3-8B layer shape and writes bench/results/kernels.json.

    python bench/kernels_bench.py [--out bench/results/kernels.json]

Each case reports the median time, the bytes it must move (each input read
once, each output written once) and the resulting bandwidth; attention cases
also report TFLOP/s. Yardsticks: the torch reference for the elementwise
kernels, torch's own SDPA (flash) on contiguous K/V for prefill.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench, do_bench_cudagraph

from cairn.kernels import build_rope_cache, reference, triton_ops

N_HEADS, N_KV_HEADS, HEAD_DIM, BLOCK_SIZE, HIDDEN, INTER = 32, 8, 128, 16, 4096, 14336
DTYPE = torch.bfloat16
ELEM = 2


def _time(fn: Callable[[], object]) -> float:
    """GPU time of one call, replayed from a CUDA graph so Python launch overhead is left out."""
    fn()
    return do_bench_cudagraph(fn, rep=200, return_mode="median") * 1e-3


def _time_eager(fn: Callable[[], object]) -> float:
    """Wall time of an eager call that syncs or cannot be captured (the torch references)."""
    return do_bench(fn, warmup=50, rep=300, return_mode="median") * 1e-3


def _paged_cache(context_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    blocks = [-(-n // BLOCK_SIZE) for n in context_lens]
    n_blocks = sum(blocks)
    shape = (n_blocks, BLOCK_SIZE, N_KV_HEADS, HEAD_DIM)
    k_cache = torch.randn(shape, dtype=DTYPE, device="cuda")
    v_cache = torch.randn(shape, dtype=DTYPE, device="cuda")
    order = torch.randperm(n_blocks, device="cuda").int()
    tables = torch.zeros(len(context_lens), max(blocks), dtype=torch.int32, device="cuda")
    first = 0
    for seq, n in enumerate(blocks):
        tables[seq, :n] = order[first : first + n]
        first += n
    return k_cache, v_cache, tables, torch.tensor(context_lens, dtype=torch.int32, device="cuda")


def bench_decode(batch: int, context: int) -> dict:
    k_cache, v_cache, tables, seq_lens = _paged_cache([context] * batch)
    q = torch.randn(batch, N_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    seconds = _time(lambda: triton_ops.paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, 0.088))
    moved = 2 * batch * context * N_KV_HEADS * HEAD_DIM * ELEM
    return {"case": f"decode B={batch} ctx={context}", "us": seconds * 1e6, "GB/s": moved / seconds / 1e9}


def bench_prefill(n_seqs: int, q_len: int, prefix: int) -> dict:
    context = prefix + q_len
    k_cache, v_cache, tables, seq_lens = _paged_cache([context] * n_seqs)
    q = torch.randn(n_seqs * q_len, N_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    starts = torch.arange(n_seqs + 1, dtype=torch.int32, device="cuda") * q_len
    seconds = _time(
        lambda: triton_ops.prefill_attention(q, k_cache, v_cache, tables, starts, seq_lens, 0.088)
    )
    # Causal: each query sees prefix + (its index + 1) keys on average half the chunk.
    pairs = n_seqs * q_len * (prefix + (q_len + 1) / 2)
    flops = 4 * pairs * N_HEADS * HEAD_DIM
    row = {"case": f"prefill S={n_seqs} q={q_len} prefix={prefix}", "us": seconds * 1e6}
    row["TFLOP/s"] = flops / seconds / 1e12
    if prefix == 0:
        dense_q = torch.randn(n_seqs, N_HEADS, q_len, HEAD_DIM, dtype=DTYPE, device="cuda")
        # K/V expanded to every query head so torch can take its flash path.
        dense_kv = torch.randn(n_seqs, N_HEADS, q_len, HEAD_DIM, dtype=DTYPE, device="cuda")
        sdpa = _time(lambda: F.scaled_dot_product_attention(dense_q, dense_kv, dense_kv, is_causal=True))
        row["torch_sdpa_us"] = sdpa * 1e6
    return row


def bench_elementwise(n_tokens: int) -> list[dict]:
    x = torch.randn(n_tokens, HIDDEN, dtype=DTYPE, device="cuda")
    residual = torch.randn_like(x)
    weight = torch.randn(HIDDEN, dtype=DTYPE, device="cuda")
    gate_up = torch.randn(n_tokens, 2 * INTER, dtype=DTYPE, device="cuda")
    q = torch.randn(n_tokens, N_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    k = torch.randn(n_tokens, N_KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    positions = torch.randint(0, 8192, (n_tokens,), device="cuda")
    rope = build_rope_cache(HEAD_DIM, 8192, 500000.0, None, "cuda")
    n_blocks = -(-n_tokens // BLOCK_SIZE)
    k_cache = torch.empty(n_blocks, BLOCK_SIZE, N_KV_HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    v_cache = torch.empty_like(k_cache)
    slots = torch.randperm(n_blocks * BLOCK_SIZE, device="cuda")[:n_tokens]
    cases = [
        ("rms_norm+residual", lambda m: m.rms_norm(x, weight, 1e-5, residual), 4 * x.numel()),
        ("silu_and_mul", lambda m: m.silu_and_mul(gate_up), 3 * gate_up.numel() // 2),
        ("apply_rotary", lambda m: m.apply_rotary(q, k, positions, rope), 2 * (q.numel() + k.numel())),
        ("write_kv_cache", lambda m: m.write_kv_cache(k, k, k_cache, v_cache, slots), 4 * k.numel()),
    ]
    rows = []
    for name, run, elements in cases:
        seconds = _time(lambda run=run: run(triton_ops))
        torch_seconds = _time_eager(lambda run=run: run(reference))
        rows.append(
            {
                "case": f"{name} T={n_tokens}",
                "us": seconds * 1e6,
                "GB/s": elements * ELEM / seconds / 1e9,
                "torch_reference_eager_us": torch_seconds * 1e6,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/kernels.json"))
    args = parser.parse_args()
    rows = [
        bench_decode(1, 4096),
        bench_decode(1, 32768),
        bench_decode(64, 1024),
        bench_decode(256, 512),
        bench_prefill(1, 4096, 0),
        bench_prefill(8, 512, 0),
        bench_prefill(4, 512, 2048),
        *bench_elementwise(4096),
    ]
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else str(v) for k, v in row.items()))


if __name__ == "__main__":
    main()
