"""Quantized serving at the Llama-3.1-8B shape: every scheme against bf16, all in one run.

    python bench/quantized.py --out bench/results/quantized_8b_h200.json            # H200, ~8 minutes
    python bench/quantized.py --quick --out $OUT/quantized.json                      # short lease
    python bench/quantized.py --tiny --out /tmp/quantized.json                       # CPU smoke run

Variants (random weights of each kind, `load_format="dummy"`, bf16 activations):
bf16, w8a16, w4a16 (group 128), w8a8_int8 (per-token INT8 activations),
w8a8_fp8 (e4m3, `torch._scaled_mm`), kv_int8 and kv_fp8 (bf16 weights, dynamic
per-token-head KV scales). For each, one engine (`LLM`, the in-process
scheduler + worker) is built at the same `gpu_memory_utilization`, then:

  (a) the reference workload (/work/shared/bench/workload.py: 512 requests, log-normal prompts of
      mean ~348 tokens, 256 output tokens, EOS ignored, greedy) through `LLM.generate`: output
      tokens/s, and the KV blocks the memory left after the weights bought, as the maximum number
      of concurrent sequences of mean length (the KV variants' point: more sequences, same memory);
  (b) batch-1 decode tokens/s on the same worker (prompt 128, 256 generated, CUDA graphs), against
      the roofline: copy bandwidth over the bytes a step reads (weights without the embedding, KV).

Results are written after every variant, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from engine_decode import SHAPES, Timer, copy_bandwidth
from provenance import provenance, write_results
from throughput import engine_throughput, load_workload

from cairn.services.scheduler.offline import LLM
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.kv_cache import block_bytes
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput

# name -> (quantization, kv_cache_dtype)
VARIANTS = {
    "bf16": ("none", "auto"),
    "w8a16": ("w8a16", "auto"),
    "w4a16": ("w4a16", "auto"),
    "w8a8_int8": ("w8a8_int8", "auto"),
    "w8a8_fp8": ("w8a8_fp8", "auto"),
    "kv_int8": ("none", "int8"),
    "kv_fp8": ("none", "fp8"),
}
# Sequence ids for the batch-1 run, far from any the engine hands out.
_SEQ_BASE = 1 << 40
# Random W4A16 weights come in groups of 128: the CPU smoke shape needs 128-wide layers.
TINY = {**SHAPES["tiny"], "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4}


def make_llm(model_dir: Path, args: argparse.Namespace, quantization: str, kv_cache_dtype: str) -> LLM:
    return LLM(
        str(model_dir),
        load_format="dummy",
        device=args.device,
        dtype=args.dtype,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        cpu_kv_cache_gb=args.cpu_kv_cache_gb,
        quantization=quantization,
        kv_cache_dtype=kv_cache_dtype,
    )


def batch1_decode(runner: ModelRunner, args: argparse.Namespace, timer: Timer) -> float:
    """Decode tokens/s of one sequence (prompt_len prompt, gen_len tokens, prefill excluded), median of
    repeats after a warm-up. Runs on the engine's worker after its workload: the blocks it writes
    belong to no live request any more."""
    decode_steps = args.gen_len - 1
    blocks = list(range(-(-(args.prompt_len + args.gen_len) // runner.block_size)))
    params = SamplingParams(temperature=0.0, max_tokens=args.gen_len)
    elapsed: list[float] = []
    for repeat in range(args.repeats + 1):
        seq_id = _SEQ_BASE + repeat
        prompt = list(range(1, args.prompt_len + 1))
        runner.step(
            StepInput(
                new_seqs=[NewSequence(seq_id, prompt, len(prompt), params)],
                scheduled=[ScheduledSeq(seq_id, 0, len(prompt), blocks)],
            )
        )
        with timer.span() as ms:
            for done in range(decode_steps):
                runner.step(StepInput(scheduled=[ScheduledSeq(seq_id, args.prompt_len + done, 1)]))
        runner.free([seq_id])
        elapsed += ms
    return decode_steps / statistics.median(elapsed[1:]) * 1e3


def step_read_bytes(runner: ModelRunner, context_tokens: int) -> int:
    """Bytes one decode step reads: weights (quantized codes and scales included) but the embedding
    table, plus `context_tokens` tokens of KV cache in its element type."""
    weights = runner.weight_bytes
    if not runner.model_config.tie_word_embeddings:
        weights -= runner.model.model.embed_tokens.weight.nbytes
    return weights + context_tokens * block_bytes(runner.model_config, 1, runner.dtype, runner.kv_quant)


def bench_variant(
    name: str, shape: dict, args: argparse.Namespace, prompts: list[list[int]], timer: Timer, bandwidth: float
) -> dict:
    quantization, kv_cache_dtype = VARIANTS[name]
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(shape))
        llm = make_llm(Path(tmp), args, quantization, kv_cache_dtype)
    runner = llm._worker.runner
    try:
        load_s = time.perf_counter() - begin
        workload = engine_throughput(llm, prompts, args.output_len)
        mean_len = statistics.fmean(len(p) for p in prompts) + args.output_len
        tokens_per_s = batch1_decode(runner, args, timer)
        roofline = bandwidth / step_read_bytes(runner, args.prompt_len + args.gen_len // 2)
        kv_per_token = block_bytes(runner.model_config, 1, runner.dtype, runner.kv_quant)
        return {
            "quantization": runner.quantization.name,
            "kv_cache": runner.kv_quant.name if runner.kv_quant else str(runner.dtype).removeprefix("torch."),
            "weight_gib": runner.weight_bytes / 2**30,
            "kv_bytes_per_token": kv_per_token,
            "num_kv_blocks": runner.num_blocks,
            "kv_cache_gib": runner.kv_cache_bytes / 2**30,
            "max_concurrent_sequences_of_mean_length": int(runner.num_blocks * runner.block_size // mean_len),
            "throughput": workload,
            "batch1_tokens_per_s": tokens_per_s,
            "roofline_batch1_tokens_per_s": roofline,
            "pct_of_roofline": 100 * tokens_per_s / roofline,
            "load_s": load_s,
            "total_s": time.perf_counter() - begin,
        }
    finally:
        llm.close()
        # The local `runner` too: while it lives, its weights and KV cache stay allocated
        # and the next variant finds no memory for its own.
        del llm, runner
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def print_table(results: dict) -> None:
    base = results["variants"].get("bf16", {})
    header = ("variant", "weights", "KV/token", "max seqs", "out tok/s", "batch-1", "roof%")
    print(f"{header[0]:10} " + " ".join(f"{h:>9}" for h in header[1:]))
    for name, r in results["variants"].items():
        if "error" in r:
            print(f"{name:10} failed: {r['error'].splitlines()[-1]}")
            continue
        speedup = ""
        if base.get("throughput"):
            speedup = (
                f"  x{r['throughput']['output_tokens_per_s'] / base['throughput']['output_tokens_per_s']:.2f}"
            )
        sequences = r["max_concurrent_sequences_of_mean_length"]
        print(
            f"{name:10} {r['weight_gib']:8.2f}G {r['kv_bytes_per_token']:9d} {sequences:9d} "
            f"{r['throughput']['output_tokens_per_s']:9.0f} {r['batch1_tokens_per_s']:9.1f} "
            f"{r['pct_of_roofline']:8.1f}%{speedup}"
        )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}"
    )
    parser.add_argument("--model", default="8b", choices=sorted(SHAPES))
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: 128-wide tiny shape, fp32")
    parser.add_argument("--quick", action="store_true", help="128 requests of 64 tokens, one repeat")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-num-seqs", type=int, default=512)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--cpu-kv-cache-gb", type=float, default=0.25)
    parser.add_argument("--bandwidth-gib", type=float, default=4.0)
    parser.add_argument("--workload", type=Path, help="the reference workload module (default: shared/bench)")
    parser.add_argument("--commit", help="commit to record when the tree is a copy without .git")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.output_len, args.repeats = 128, 64, 1
    if args.tiny:
        args.device, args.dtype, args.requests, args.output_len = "cpu", "float32", 8, 8
        args.prompt_len, args.gen_len, args.repeats, args.max_num_seqs = 16, 8, 1, 8
        args.max_num_batched_tokens, args.max_model_len, args.bandwidth_gib = 512, 512, 0.25
    args.variants = args.variants.split(",")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    begin = time.perf_counter()
    device = EngineConfig(model="", device=args.device).torch_device()
    timer = Timer(device)
    bandwidth = copy_bandwidth(device, args.bandwidth_gib, timer)
    shape = copy.deepcopy(TINY if args.tiny else SHAPES[args.model])
    workload = load_workload(args.workload)
    prompts, _ = workload.reference_workload(
        n=args.requests, vocab=shape["vocab_size"], output_len=args.output_len
    )
    if args.tiny:
        prompts = [p[: args.max_model_len - args.output_len - 1] for p in prompts]
    results = provenance(args, device) | {
        "shape": "tiny-128" if args.tiny else args.model,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "variants": {},
    }
    for name in args.variants:
        print(f"== {name}", flush=True)
        try:
            results["variants"][name] = bench_variant(name, shape, args, prompts, timer, bandwidth)
        except Exception:
            # One scheme failing (e.g. FP8 on a GPU without FP8 tensor cores) must not cost the others.
            results["variants"][name] = {"error": traceback.format_exc()}
        results["total_s"] = time.perf_counter() - begin
        write_results(args.out, results)
    print(
        f"copy bandwidth {bandwidth / 1e9:.0f} GB/s; {results['total_s']:.0f} s in all; results in {args.out}"
    )
    print_table(results)


if __name__ == "__main__":
    main()
