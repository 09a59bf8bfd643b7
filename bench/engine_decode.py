"""Decode speed of the engine core against HF transformers and the HBM roofline.

    python bench/engine_decode.py --models 8b,0.5b --out bench/results/engine_decode.json
    python bench/engine_decode.py --quick --profile --out $OUT/engine_decode.json    # short GPU lease
    python bench/engine_decode.py --tiny --profile --compile --out /tmp/e.json       # CPU smoke run

Random-init weights (`load_format="dummy"`, built on the device from a
config.json; no checkpoint, no hub) at the Llama-3.1-8B and Qwen2.5-0.5B
shapes in bf16. Measured, each as the median of repeats after a warm-up,
timed with CUDA events:

  (a) batch-1 decode tokens/s: prompt 128, 256 generated, one runner step per
      token (and with multi-step decode, 8 tokens per runner call);
  (b) decode step time at fixed batch sizes with ~512 tokens of context;
  (c) HF `generate` batch-1 tokens/s on the same shape (greedy, fixed length);
  (d) device copy bandwidth, and the roofline: bandwidth over the bytes a
      decode step must read (weights + KV cache), with our % of it.

Options for a short device lease:

  --quick    fewer repeats and tokens (HF baseline included); about 3 minutes
             for 8b,0.5b on an H200, most of it model setup and Triton compiles;
  --profile  a torch.profiler trace of a few batch-1 decode steps, replayed
             from the CUDA graphs and again eagerly, written to the JSON as a
             per-kernel table (name, count, total us, share) with the kernel
             time per step against the measured time per token; on the CPU the
             table lists aten ops instead;
  --compile  batch-1 decode again with the captured step compiled by
             torch.compile (--compile-mode, default max-autotune-no-cudagraphs),
             one graph size only; a failure is recorded, not raised;
  --gemv     batch-1 decode again with decode-size linear layers on the
             Triton GEMV (kernels.triton_gemv) instead of cuBLAS, the norms and
             the SiLU gate fused into them (6 launches a layer instead of 9),
             graphs captured again (with --profile, its kernel table too).

`phase_seconds` in the JSON records where the run's wall time went.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from provenance import provenance, write_results
from torch.autograd import DeviceType

from cairn import kernels
from cairn.services.worker.driver import Driver
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.kv_cache import block_bytes
from cairn.services.worker.model_runner import ModelRunner
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.step import NewSequence, ScheduledSeq, StepInput

_COMMON = {"hidden_act": "silu", "rms_norm_eps": 1e-5, "bos_token_id": None, "eos_token_id": None}
SHAPES = {
    "8b": {
        **_COMMON,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": False,
    },
    "0.5b": {
        **_COMMON,
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
    },
    "tiny": {
        **_COMMON,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
}


class Timer:
    """Milliseconds of a span: CUDA events on a GPU, the wall clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def span(self) -> Iterator[list[float]]:
        """`with timer.span() as ms:` leaves the span's milliseconds in ms[0]."""
        out: list[float] = []
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            yield out
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            yield out
            out.append((time.perf_counter() - begin) * 1e3)

    def median_ms(self, fn: Callable[[], object], repeats: int) -> float:
        """Median over `repeats` calls after one warm-up call."""
        fn()
        times = []
        for _ in range(repeats):
            with self.span() as ms:
                fn()
            times.append(ms[0])
        return statistics.median(times)


def copy_bandwidth(device: torch.device, gib: float, timer: Timer) -> float:
    """Bytes/s of a large device-to-device copy, counting the read and the write."""
    source = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    ms = timer.median_ms(lambda: target.copy_(source), repeats=10)
    return 2 * source.numel() / (ms / 1e3)


def make_runner(
    model_dir: Path,
    args: argparse.Namespace,
    device: torch.device,
    max_num_seqs: int | None = None,
    compile_mode: str | None = None,
) -> ModelRunner:
    runner = ModelRunner(
        EngineConfig(
            model=str(model_dir),
            load_format="dummy",
            dtype=args.dtype,
            device=device.type,
            max_num_seqs=max_num_seqs or max(args.batch_sizes),
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len,
            gpu_memory_utilization=args.gpu_memory_utilization,
            cpu_kv_cache_gb=args.cpu_kv_cache_gb,
            enforce_eager=args.enforce_eager,
        ),
        compile_mode=compile_mode,
    )
    runner.load()
    runner.profile_and_allocate_kv_cache()
    return runner


def runner_for(shape: dict, args: argparse.Namespace, device: torch.device, **kwargs: object) -> ModelRunner:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(shape))
        return make_runner(Path(tmp), args, device, **kwargs)


def step_read_bytes(runner: ModelRunner, context_tokens: int) -> int:
    """What one decode step must read from memory: every weight but the embedding
    table (only its looked-up rows are read, unless it doubles as lm_head) and
    the KV cache of `context_tokens` tokens in all."""
    weights = runner.weight_bytes
    if not runner.model_config.tie_word_embeddings:
        weights -= runner.model.model.embed_tokens.weight.nbytes
    per_token = block_bytes(runner.model_config, 1, runner.dtype)
    return weights + context_tokens * per_token


def start_sequence(runner: ModelRunner, seq_id: int, args: argparse.Namespace) -> None:
    """Introduces and prefills one sequence of prompt_len tokens, with blocks for gen_len more."""
    prompt = list(range(1, args.prompt_len + 1))
    blocks = list(range(-(-(args.prompt_len + args.gen_len) // runner.block_size)))
    params = SamplingParams(temperature=0.0, max_tokens=args.gen_len)
    runner.step(
        StepInput(
            new_seqs=[NewSequence(seq_id, prompt, len(prompt), params)],
            scheduled=[ScheduledSeq(seq_id, 0, len(prompt), blocks)],
        )
    )


def batch1_decode(runner: ModelRunner, args: argparse.Namespace, timer: Timer, num_steps: int) -> float:
    """Decode tokens/s for one sequence: prompt_len prompt, gen_len tokens, the prefill excluded."""
    decode_steps = args.gen_len - 1
    elapsed_ms: list[float] = []
    for seq_id in range(args.repeats + 1):
        start_sequence(runner, seq_id, args)
        with timer.span() as ms:
            done = 0
            while done < decode_steps:
                steps = min(num_steps, decode_steps - done)
                scheduled = [ScheduledSeq(seq_id, args.prompt_len + done, 1)]
                runner.step(StepInput(scheduled=scheduled, num_steps=steps))
                done += steps
        runner.free([seq_id])
        elapsed_ms += ms
    # The first run is the warm-up.
    return decode_steps / statistics.median(elapsed_ms[1:]) * 1e3


# Kernel families by name, for the profile's summary (first match wins).
_KERNEL_FAMILIES = [
    ("memcpy", r"Memcpy|Memset|memcpy|memset"),
    ("attention", r"_decode_kernel|_prefill_kernel|attention"),
    ("rotary+kv store", r"_rotary_cache_kernel|_rotary_kernel|_write_kv"),
    ("rms_norm", r"rms_norm"),
    ("silu_and_mul", r"silu"),
    ("gemm", r"gemm|gemv|nvjet|cutlass|xmma|splitK|cublas|aten::mm|aten::addmm|aten::linear"),
    ("argmax", r"argmax|arg_max|ArgMax|reduce_kernel"),
    ("embedding", r"embedding|index"),
]


def _family(name: str) -> str:
    return next((family for family, pattern in _KERNEL_FAMILIES if re.search(pattern, name)), "other")


def kernel_table(events: list, device: torch.device, steps: int) -> dict:
    """Per-kernel totals of a profile over `steps` decode steps: GPU kernels on CUDA, else
    aten ops by self time (the CPU smoke run). On CUDA, the idle time between consecutive
    kernels is split at 20 us: shorter gaps are launch latency inside a graph (or between
    back-to-back launches), longer ones the GPU waiting for the host."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    spans: list[tuple[float, float]] = []
    for event in events:
        if device.type == "cuda":
            if event.device_type != DeviceType.CUDA:
                continue
            duration = event.time_range.elapsed_us()
            spans.append((event.time_range.start, event.time_range.end))
        elif event.name.startswith("aten::") and event.device_type == DeviceType.CPU:
            duration = event.self_cpu_time_total
        else:
            continue
        totals[event.name][0] += 1
        totals[event.name][1] += duration
    total_us = sum(us for _, us in totals.values()) or 1.0
    rows = [
        {"name": name[:160], "count": count, "total_us": round(us, 1), "share": round(us / total_us, 4)}
        for name, (count, us) in sorted(totals.items(), key=lambda item: -item[1][1])
    ]
    families: dict[str, float] = defaultdict(float)
    for name, (_, us) in totals.items():
        families[_family(name)] += us / steps
    table = {
        "steps": steps,
        "kernels_per_step": sum(count for count, _ in totals.values()) / steps,
        "kernel_us_per_step": total_us / steps,
        "us_per_step_by_family": {k: round(v, 1) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
    }
    if spans:
        short = long = 0.0
        spans.sort()
        busy_until = spans[0][1]
        for start, end in spans[1:]:
            gap = start - busy_until
            if gap > 0:
                short, long = (short + gap, long) if gap < 20 else (short, long + gap)
            busy_until = max(busy_until, end)
        table["gap_us_per_step_under_20us"] = short / steps
        table["gap_us_per_step_20us_and_over"] = long / steps
    table["kernels"] = rows
    return table


def _tagged(path: Path, tag: str) -> Path:
    """trace.json.gz, "8b" -> trace_8b.json.gz (a .gz chrome trace is written compressed)."""
    base, _, suffixes = path.name.partition(".")
    return path.with_name(f"{base}_{tag}.{suffixes}" if suffixes else f"{base}_{tag}")


def profile_decode(
    runner: ModelRunner, args: argparse.Namespace, device: torch.device, trace: Path | None
) -> dict:
    """Kernel tables of `args.profile_steps` batch-1 decode steps, replayed from the CUDA graphs
    and again eagerly (the same kernels, each launched from Python)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    graphs = runner.graphs
    result = {}
    for mode in ("graph", "eager") if graphs is not None else ("eager",):
        runner.graphs = graphs if mode == "graph" else None
        seq_id = 2_000_000 + len(result)
        start_sequence(runner, seq_id, args)
        position = args.prompt_len

        def one_step(seq_id: int = seq_id) -> None:
            nonlocal position
            runner.step(StepInput(scheduled=[ScheduledSeq(seq_id, position, 1)]))
            position += 1

        for _ in range(3):
            one_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(args.profile_steps):
                one_step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        runner.free([seq_id])
        result[mode] = kernel_table(prof.events(), device, args.profile_steps)
        if trace is not None:
            trace.parent.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(_tagged(trace, mode)))
    runner.graphs = graphs
    return result


def fixed_batch_steps(runner: ModelRunner, args: argparse.Namespace, timer: Timer) -> list[dict]:
    """Decode step time at each batch size, every sequence holding ~context tokens."""
    rows = []
    block_size = runner.block_size
    prompt = list(range(1, args.context + 1))
    per_seq = -(-(args.context + args.fixed_steps + 2) // block_size)
    for batch in args.batch_sizes:
        if batch * per_seq > runner.num_blocks:
            rows.append(
                {"batch": batch, "skipped": f"needs {batch * per_seq} blocks, have {runner.num_blocks}"}
            )
            continue
        seq_ids = list(range(1_000_000, 1_000_000 + batch))
        params = SamplingParams(temperature=0.0, max_tokens=args.fixed_steps + 2)
        Driver(runner).prefill(
            [NewSequence(s, prompt, len(prompt), params) for s in seq_ids],
            {s: list(range(i * per_seq, (i + 1) * per_seq)) for i, s in enumerate(seq_ids)},
        )
        position = args.context

        def one_step(seq_ids: list[int] = seq_ids) -> None:
            nonlocal position
            runner.step(StepInput(scheduled=[ScheduledSeq(s, position, 1) for s in seq_ids]))
            position += 1

        # Warm-up and repeats each take one step; lengths grow by one per step.
        ms = timer.median_ms(one_step, repeats=args.fixed_steps)
        read = step_read_bytes(runner, batch * (args.context + args.fixed_steps // 2))
        rows.append(
            {
                "batch": batch,
                "context": args.context,
                "step_ms": ms,
                "tokens_per_s": batch / ms * 1e3,
                "read_bytes": read,
            }
        )
        runner.free(seq_ids)
    return rows


def hf_generate(shape: dict, args: argparse.Namespace, device: torch.device, timer: Timer) -> float:
    """HF `generate` batch-1 tokens/s on the same shape (random init, greedy, fixed length)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    # A deep copy: transformers writes rope_theta into the rope_scaling dict it is given.
    fields = {k: copy.deepcopy(v) for k, v in shape.items() if k not in ("architectures", "model_type")}
    config = AutoConfig.for_model(shape["model_type"], **fields)
    dtype = getattr(torch, args.dtype)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    prompt = torch.arange(1, args.prompt_len + 1, device=device)[None]
    mask = torch.ones_like(prompt)
    tokens = args.hf_tokens

    def generate() -> None:
        model.generate(
            prompt,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=0,
        )

    return tokens / timer.median_ms(generate, repeats=args.hf_repeats) * 1e3


def bench_model(
    name: str, args: argparse.Namespace, device: torch.device, timer: Timer, bandwidth: float, phases: dict
) -> dict:
    shape = SHAPES[name]
    result: dict = {"shape": {k: v for k, v in shape.items() if not k.endswith("_token_id")}}
    phase = Phases(phases, name)
    if not args.skip_hf:
        with phase("hf_generate"):
            result["hf_generate_batch1_tokens_per_s"] = hf_generate(shape, args, device, timer)
        release(device)
    with phase("runner_setup"):
        runner = runner_for(shape, args, device)
    result["weight_bytes"] = runner.weight_bytes
    result["num_kv_blocks"] = runner.num_blocks
    result["cuda_graph_batch_sizes"] = runner.cuda_graph_batch_sizes
    average_context = args.prompt_len + args.gen_len // 2
    roofline = bandwidth / step_read_bytes(runner, average_context)
    result["roofline_batch1_tokens_per_s"] = roofline
    with phase("batch1_decode"):
        for num_steps in (1, args.multi_step):
            tps = batch1_decode(runner, args, timer, num_steps)
            key = "batch1_decode" if num_steps == 1 else f"batch1_decode_multistep{num_steps}"
            result[f"{key}_tokens_per_s"] = tps
            result[f"{key}_pct_of_roofline"] = 100 * tps / roofline
    if args.profile:
        with phase("profile"):
            trace = None if args.profile_trace is None else _tagged(args.profile_trace, name)
            result["profile"] = profile_decode(runner, args, device, trace)
        explain(result["profile"], result["batch1_decode_tokens_per_s"])
    with phase("fixed_batch"):
        result["fixed_batch"] = fixed_batch_steps(runner, args, timer)
    for row in result["fixed_batch"]:
        if "step_ms" in row:
            row["pct_of_roofline"] = 100 * (row["read_bytes"] / bandwidth) / (row["step_ms"] / 1e3)
    if "hf_generate_batch1_tokens_per_s" in result:
        result["speedup_vs_hf_batch1"] = (
            result["batch1_decode_tokens_per_s"] / result["hf_generate_batch1_tokens_per_s"]
        )
    if args.gemv:
        with phase("triton_gemv"):
            result["triton_gemv"] = triton_gemv_decode(runner, args, device, timer, roofline)
    del runner
    release(device)
    if args.compile:
        with phase("compiled"):
            result["compiled"] = compiled_decode(shape, args, device, timer, roofline)
        release(device)
    return result


def compiled_decode(
    shape: dict, args: argparse.Namespace, device: torch.device, timer: Timer, roofline: float
) -> dict:
    """Batch-1 decode with the captured step compiled by torch.compile (one graph size)."""
    result: dict = {"mode": args.compile_mode}
    begin = time.perf_counter()
    try:
        runner = runner_for(shape, args, device, max_num_seqs=1, compile_mode=args.compile_mode)
        result["setup_s"] = time.perf_counter() - begin
        result["cuda_graph_batch_sizes"] = runner.cuda_graph_batch_sizes
        tps = batch1_decode(runner, args, timer, 1)
        result["batch1_decode_tokens_per_s"] = tps
        result["batch1_decode_pct_of_roofline"] = 100 * tps / roofline
        del runner
    except Exception as error:
        # A failed variant is a result to record, not a reason to lose the rest of the run.
        result["error"] = "".join(traceback.format_exception_only(error)).strip()
        result["traceback"] = traceback.format_exc()[-4000:]
    return result


def explain(profile: dict, tokens_per_s: float) -> None:
    """Adds to each kernel table what its kernels leave unexplained of the measured time per
    token (batch-1 single-step decode): launch gaps and host work."""
    us_per_token = 1e6 / tokens_per_s
    for table in profile.values():
        table["measured_us_per_token"] = us_per_token
        table["unexplained_us_per_token"] = us_per_token - table["kernel_us_per_step"]


def triton_gemv_decode(
    runner: ModelRunner, args: argparse.Namespace, device: torch.device, timer: Timer, roofline: float
) -> dict:
    """Batch-1 decode with decode-size linear layers on the Triton GEMV instead of cuBLAS
    (graphs captured again with it, autotuning first); the runner is left on the GEMV."""
    result: dict = {}
    try:
        with kernels.triton_gemv():
            begin = time.perf_counter()
            if runner.graphs is not None:
                runner.capture_graphs()
            result["setup_s"] = time.perf_counter() - begin
            for num_steps in (1, args.multi_step):
                tps = batch1_decode(runner, args, timer, num_steps)
                key = "batch1_decode" if num_steps == 1 else f"batch1_decode_multistep{num_steps}"
                result[f"{key}_tokens_per_s"] = tps
                result[f"{key}_pct_of_roofline"] = 100 * tps / roofline
            if args.profile:
                result["profile"] = profile_decode(runner, args, device, None)
                explain(result["profile"], result["batch1_decode_tokens_per_s"])
    except Exception as error:
        # A failed variant is a result to record, not a reason to lose the rest of the run.
        result["error"] = "".join(traceback.format_exception_only(error)).strip()
        result["traceback"] = traceback.format_exc()[-4000:]
    return result


class Phases:
    """`with phase("name"):` adds the block's wall seconds to phases["<model>/<name>"]."""

    def __init__(self, phases: dict, prefix: str) -> None:
        self.phases = phases
        self.prefix = prefix

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            key = f"{self.prefix}/{name}"
            self.phases[key] = self.phases.get(key, 0.0) + time.perf_counter() - begin


def release(device: torch.device) -> None:
    # HF models hold reference cycles: without a collection their weights and
    # caches outlive the function that built them and eat the next runner's KV budget.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _print_profile(label: str, profile: dict) -> None:
    for mode, table in profile.items():
        print(
            f"{label} ({mode}): {table['kernels_per_step']:.0f} kernels, "
            f"{table['kernel_us_per_step']:.0f} us of kernels per step; "
            f"{table['unexplained_us_per_token']:.0f} us per token outside them"
        )
        if "gap_us_per_step_under_20us" in table:
            print(
                f"    gaps between kernels per step: {table['gap_us_per_step_under_20us']:.0f} us "
                f"under 20 us each, {table['gap_us_per_step_20us_and_over']:.0f} us in longer ones"
            )
        for family, us in table["us_per_step_by_family"].items():
            print(f"    {family:<20} {us:8.1f} us/step")


def print_table(results: dict) -> None:
    for name, r in results["models"].items():
        print(f"\n== {name}  (roofline batch-1 {r['roofline_batch1_tokens_per_s']:.0f} tok/s)")
        if "hf_generate_batch1_tokens_per_s" in r:
            print(f"HF generate batch 1          {r['hf_generate_batch1_tokens_per_s']:10.1f} tok/s")
        for key in [k for k in r if k.startswith("batch1_decode") and k.endswith("tokens_per_s")]:
            pct = r[key.replace("tokens_per_s", "pct_of_roofline")]
            print(f"{key[:-13]:<28} {r[key]:10.1f} tok/s   {pct:5.1f}% of roofline")
        _print_profile("profile", r.get("profile", {}))
        if "triton_gemv" in r:
            g = r["triton_gemv"]
            if "error" in g:
                print(f"triton gemv: failed: {g['error']}")
            else:
                for key in [k for k in g if k.startswith("batch1_decode") and k.endswith("tokens_per_s")]:
                    pct = g[key.replace("tokens_per_s", "pct_of_roofline")]
                    print(f"triton gemv {key[:-13]:<16} {g[key]:10.1f} tok/s   {pct:5.1f}% of roofline")
                _print_profile("triton gemv profile", g.get("profile", {}))
        if "compiled" in r:
            c = r["compiled"]
            if "error" in c:
                print(f"compiled ({c['mode']}): failed: {c['error']}")
            else:
                print(
                    f"compiled ({c['mode']}) batch 1    {c['batch1_decode_tokens_per_s']:10.1f} tok/s   "
                    f"{c['batch1_decode_pct_of_roofline']:5.1f}% of roofline  (setup {c['setup_s']:.0f} s)"
                )
        for row in r["fixed_batch"]:
            if "step_ms" in row:
                print(
                    f"batch {row['batch']:>4} ctx {row['context']}     step {row['step_ms']:8.3f} ms "
                    f"{row['tokens_per_s']:10.0f} tok/s   {row['pct_of_roofline']:5.1f}% of roofline"
                )
            else:
                print(f"batch {row['batch']:>4}: {row['skipped']}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="8b,0.5b", help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shape, small counts, fp32")
    parser.add_argument("--out", type=Path, required=True, help="JSON results path")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=256)
    parser.add_argument(
        "--multi-step", type=int, default=8, help="tokens per runner call in the multi-step run"
    )
    parser.add_argument("--batch-sizes", default="1,8,32,128,256")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--fixed-steps", type=int, default=20, help="timed decode steps per batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-tokens", type=int, default=128)
    parser.add_argument("--hf-repeats", type=int, default=3)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--cpu-kv-cache-gb", type=float, default=1.0)
    parser.add_argument(
        "--bandwidth-gib", type=float, default=4.0, help="size of the copy that measures bandwidth"
    )
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--commit", help="commit to record when the tree is a copy without .git")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and tokens, for a short lease")
    parser.add_argument("--profile", action="store_true", help="per-kernel table of batch-1 decode steps")
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument(
        "--profile-trace", type=Path, help="also write chrome traces: x.json.gz -> x_<model>_<mode>.json.gz"
    )
    parser.add_argument("--compile", action="store_true", help="batch-1 decode of the torch.compile'd step")
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    parser.add_argument(
        "--gemv", action="store_true", help="batch-1 decode again with the Triton GEMV instead of cuBLAS"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.hf_repeats, args.hf_tokens, args.fixed_steps = 1, 1, 32, 6
    if args.tiny:
        args.models, args.device, args.dtype = "tiny", "cpu", "float32"
        args.prompt_len, args.gen_len, args.context, args.fixed_steps = 16, 12, 32, 4
        args.batch_sizes, args.hf_tokens, args.bandwidth_gib, args.multi_step = "1,2,4", 8, 0.25, 4
        args.profile_steps, args.compile_mode = 2, "default"
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.models = args.models.split(",")
    unknown = set(args.models) - set(SHAPES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(SHAPES)}")
    return args


ModelBench = Callable[[str, torch.device, "Timer", float, dict], dict]


def run_models(args: argparse.Namespace, bench: ModelBench) -> dict:
    """Measures the copy bandwidth, then `bench(name, device, timer, bandwidth, phases)` for each
    of `args.models`; writes the results with their provenance to `args.out` and returns them
    (shared with bench/tp.py)."""
    begin = time.perf_counter()
    device = EngineConfig(model="", device=args.device).torch_device()
    timer = Timer(device)
    bandwidth = copy_bandwidth(device, args.bandwidth_gib, timer)
    phases: dict[str, float] = {}
    results = provenance(args, device) | {
        "copy_bandwidth_bytes_per_s": bandwidth,
        "models": {},
        "phase_seconds": phases,
    }
    for name in args.models:
        results["models"][name] = bench(name, device, timer, bandwidth, phases)
    phases["total"] = time.perf_counter() - begin
    write_results(args.out, results)
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s; {phases['total']:.0f} s in all; results in {args.out}")
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def bench(name: str, device: torch.device, timer: Timer, bandwidth: float, phases: dict) -> dict:
        return bench_model(name, args, device, timer, bandwidth, phases)

    print_table(run_models(args, bench))


if __name__ == "__main__":
    main()
