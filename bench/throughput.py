"""Offline throughput of the in-process engine on the reference workload, next to HF
`generate_batch` in the same run, and what prefix caching does to time to first token.

    python bench/throughput.py --models 0.5b --out bench/results/throughput_0.5b_h200.json
    python bench/throughput.py --models 8b --out bench/results/throughput_8b_h200.json
    python bench/throughput.py --tiny --out /tmp/throughput.json          # CPU smoke run

One model per run keeps each within a 10-minute slot (HF generate_batch alone took
84 s for 0.5B and 167 s for 8B on the H200). Random-init weights (`load_format="dummy"`,
built on the device from the shapes in engine_decode.py), bf16. Measured:

  (a) the reference workload (/work/shared/bench/workload.py: 512 requests, log-normal
      prompts of mean ~348 tokens, 256 output tokens each, EOS ignored, greedy) through
      `LLM.generate`: all requests queued at once, the engine batches continuously.
      Output tokens/s over the whole run, and per-request TTFT, time per output token
      and latency;
  (b) the same prompts through HF `model.generate_batch` (transformers' continuous
      batching), greedy, the same output length;
  (c) prefix caching: a 1,024-token system prompt shared by short questions, sent one
      at a time, TTFT with the cache warm (on) and emptied before each request (off);
      and the same questions sent as one burst, on and off.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import torch
from engine_decode import SHAPES
from provenance import provenance, write_results

from cairn.services.scheduler.offline import LLM, GenerationResult
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.sampling_params import SamplingParams

REPO = Path(__file__).resolve().parent.parent
WORKLOAD_PATHS = (
    REPO / "shared" / "bench" / "workload.py",
    REPO.parent / "shared" / "bench" / "workload.py",
    Path("/work/shared/bench/workload.py"),
)


def load_workload(path: Path | None) -> ModuleType:
    """The shared reference workload module (it is not part of the repository)."""
    candidates = [path] if path is not None else [p for p in WORKLOAD_PATHS if p.is_file()]
    if not candidates or not candidates[0].is_file():
        raise SystemExit(
            f"reference workload not found in {[str(p) for p in WORKLOAD_PATHS]}; pass --workload"
        )
    spec = importlib.util.spec_from_file_location("workload", candidates[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_llm(model_dir: Path, args: argparse.Namespace, **settings: object) -> LLM:
    """The offline engine over dummy weights in `model_dir`, configured by `add_engine_arguments`'
    flags; `settings` adds engine settings of a variant (max_loras, quantization, ...)."""
    return LLM(
        str(model_dir),
        load_format="dummy",
        device=args.device,
        dtype=args.dtype,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        num_scheduler_steps=args.num_scheduler_steps,
        gpu_memory_utilization=args.gpu_memory_utilization,
        cpu_kv_cache_gb=args.cpu_kv_cache_gb,
        enforce_eager=args.enforce_eager,
        **settings,
    )


def latency_summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "max": ordered[-1],
    }


def engine_throughput(llm: LLM, prompts: list[list[int]], output_len: int) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    # Warm-up: kernels, allocator and graphs, outside the timed run.
    llm.generate(prompts[:8], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    start = time.perf_counter()
    results = llm.generate(prompts, params)
    wall = time.perf_counter() - start
    generated = sum(len(r.outputs[0].token_ids) for r in results)
    if generated != len(prompts) * output_len:
        raise RuntimeError(f"generated {generated} tokens, expected {len(prompts) * output_len}")
    prompt_tokens = sum(len(p) for p in prompts)
    return {
        "requests": len(prompts),
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated,
        "wall_s": wall,
        "output_tokens_per_s": generated / wall,
        "total_tokens_per_s": (generated + prompt_tokens) / wall,
        "requests_per_s": len(prompts) / wall,
        "ttft_s": latency_summary([ttft(r) for r in results]),
        "time_per_output_token_s": latency_summary(
            [(r.finish_time - r.first_token_time) / (output_len - 1) for r in results]
        ),
        "latency_s": latency_summary([r.finish_time - r.arrival_time for r in results]),
        "num_kv_blocks": llm.info.num_blocks,
        "preemptions": llm.engine.scheduler.num_preemptions,
    }


def ttft(result: GenerationResult) -> float:
    return result.first_token_time - result.arrival_time


def hf_generate_batch(
    shape: dict, prompts: list[list[int]], output_len: int, args: argparse.Namespace
) -> dict:
    """transformers' continuous batching on the same shape, prompts and output length."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    # A deep copy: transformers writes rope_theta into the rope_scaling dict it is given.
    fields = {k: copy.deepcopy(v) for k, v in shape.items() if k not in ("architectures", "model_type")}
    config = AutoConfig.for_model(shape["model_type"], **fields)
    with torch.device(args.torch_device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype)).eval()
    generation = GenerationConfig(
        max_new_tokens=output_len, do_sample=False, eos_token_id=-1, pad_token_id=0, use_cache=True
    )
    start = time.perf_counter()
    outputs = model.generate_batch(inputs=prompts, generation_config=generation)
    wall = time.perf_counter() - start
    generated = sum(len(o.generated_tokens) for o in outputs.values())
    del model, outputs
    release_memory()
    return {"wall_s": wall, "generated_tokens": generated, "output_tokens_per_s": generated / wall}


def prefix_caching_ttft(llm: LLM, args: argparse.Namespace, vocab: int) -> dict:
    """TTFT of questions sharing a system prompt, the prefix cache warm vs emptied."""
    generator = torch.Generator().manual_seed(1)
    system = torch.randint(10, vocab - 10, (args.system_prompt_len,), generator=generator).tolist()
    questions = [
        system + torch.randint(10, vocab - 10, (int(n),), generator=generator).tolist()
        for n in torch.randint(16, 65, (args.prefix_requests,), generator=generator)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=args.prefix_output_len, ignore_eos=True)
    block_manager = llm.engine.block_manager
    llm.generate(questions[:1], params)

    def one_at_a_time(cached: bool) -> list[GenerationResult]:
        results = []
        for question in questions:
            if not cached:
                block_manager.reset_prefix_cache()
            results += llm.generate([question], params)
        return results

    def burst(cached: bool) -> list[GenerationResult]:
        if not cached:
            block_manager.reset_prefix_cache()
        else:
            llm.generate(questions[:1], params)
        return llm.generate(questions, params)

    report: dict = {
        "system_prompt_tokens": args.system_prompt_len,
        "requests": len(questions),
        "output_tokens": args.prefix_output_len,
    }
    for mode, run in (("sequential", one_at_a_time), ("burst", burst)):
        on, off = run(True), run(False)
        report[mode] = {
            "ttft_on_s": latency_summary([ttft(r) for r in on]),
            "ttft_off_s": latency_summary([ttft(r) for r in off]),
            "cached_prompt_tokens_on": sum(r.num_cached_tokens for r in on),
            "cached_prompt_tokens_off": sum(r.num_cached_tokens for r in off),
        }
        report[mode]["ttft_speedup_median"] = (
            report[mode]["ttft_off_s"]["median"] / report[mode]["ttft_on_s"]["median"]
        )
    return report


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_model(name: str, args: argparse.Namespace, workload: ModuleType) -> dict:
    shape = SHAPES[name]
    vocab = min(args.workload_vocab, shape["vocab_size"])
    prompts, output_len = workload.reference_workload(
        n=args.requests, vocab=vocab, output_len=args.output_len
    )
    result: dict = {"shape": {k: v for k, v in shape.items() if not k.endswith("_token_id")}}
    if not args.skip_hf:
        result["hf_generate_batch"] = hf_generate_batch(shape, prompts, output_len, args)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(shape))
        llm = make_llm(Path(tmp), args)
    try:
        result["engine"] = engine_throughput(llm, prompts, output_len)
        result["prefix_caching"] = prefix_caching_ttft(llm, args, vocab)
    finally:
        llm.close()
        del llm
        release_memory()
    if "hf_generate_batch" in result:
        result["speedup_vs_hf_generate_batch"] = (
            result["engine"]["output_tokens_per_s"] / result["hf_generate_batch"]["output_tokens_per_s"]
        )
    return result


def print_table(results: dict) -> None:
    for name, r in results["models"].items():
        engine = r["engine"]
        print(f"\n== {name}: {engine['requests']} requests, {engine['generated_tokens']} output tokens")
        print(
            f"engine                {engine['output_tokens_per_s']:10.0f} output tok/s   "
            f"({engine['wall_s']:.1f} s, TTFT median {engine['ttft_s']['median'] * 1e3:.0f} ms, "
            f"TPOT median {engine['time_per_output_token_s']['median'] * 1e3:.1f} ms)"
        )
        if "hf_generate_batch" in r:
            hf = r["hf_generate_batch"]
            print(
                f"HF generate_batch     {hf['output_tokens_per_s']:10.0f} output tok/s   "
                f"({hf['wall_s']:.1f} s; engine is {r['speedup_vs_hf_generate_batch']:.1f}x)"
            )
        prefix = r["prefix_caching"]
        for mode in ("sequential", "burst"):
            p = prefix[mode]
            print(
                f"prefix cache, {mode:<10} TTFT median on {p['ttft_on_s']['median'] * 1e3:8.1f} ms, "
                f"off {p['ttft_off_s']['median'] * 1e3:8.1f} ms ({p['ttft_speedup_median']:.1f}x)"
            )


def add_engine_arguments(
    parser: argparse.ArgumentParser,
    models: Iterable[str] = SHAPES,
    default_models: str = "0.5b",
    device: str = "auto",
) -> None:
    """The flags of a reference-workload run through the offline engine (shared with bench/lora.py
    and bench/tp.py)."""
    parser.add_argument("--models", default=default_models, help=f"comma-separated, of {sorted(models)}")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shape, small counts, fp32")
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--workload", type=Path, help="the reference workload.py (default: shared/bench/)")
    parser.add_argument("--device", default=device)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--workload-vocab", type=int, default=32000, help="token ids are drawn below this")
    parser.add_argument("--max-num-seqs", type=int, default=512, help="512 seats: the whole workload at once")
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--num-scheduler-steps", type=int, default=8, help="decode steps per worker call")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--cpu-kv-cache-gb", type=float, default=1.0)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--commit", help="commit to record when the tree is a copy without .git")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_engine_arguments(parser)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--system-prompt-len", type=int, default=1024)
    parser.add_argument("--prefix-requests", type=int, default=32)
    parser.add_argument("--prefix-output-len", type=int, default=16)
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.device, args.dtype = "tiny", "cpu", "float32"
        args.requests, args.output_len, args.max_num_seqs, args.workload_vocab = 16, 16, 16, 512
        args.max_num_batched_tokens, args.prefix_requests, args.prefix_output_len = 1024, 4, 4
        args.cpu_kv_cache_gb = 0.25
    args.models = args.models.split(",")
    unknown = set(args.models) - set(SHAPES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(SHAPES)}")
    args.torch_device = EngineConfig(model="", device=args.device).torch_device()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workload = load_workload(args.workload)
    import transformers

    results = provenance(args, args.torch_device, transformers=transformers.__version__) | {"models": {}}
    for name in args.models:
        results["models"][name] = bench_model(name, args, workload)
        write_results(args.out, results)
    print(f"results in {args.out}")
    print_table(results)


if __name__ == "__main__":
    main()
