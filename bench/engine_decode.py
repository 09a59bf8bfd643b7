"""Decode speed of the engine core against HF transformers and the HBM roofline.

    python bench/engine_decode.py --models 8b,0.5b --out bench/results/engine_decode.json
    python bench/engine_decode.py --tiny --out /tmp/engine_decode.json      # CPU smoke run

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
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

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


def make_runner(model_dir: Path, args: argparse.Namespace, device: torch.device) -> ModelRunner:
    runner = ModelRunner(
        EngineConfig(
            model=str(model_dir),
            load_format="dummy",
            dtype=args.dtype,
            device=device.type,
            max_num_seqs=max(args.batch_sizes),
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len,
            gpu_memory_utilization=args.gpu_memory_utilization,
            cpu_kv_cache_gb=args.cpu_kv_cache_gb,
            enforce_eager=args.enforce_eager,
        )
    )
    runner.load()
    runner.profile_and_allocate_kv_cache()
    return runner


def step_read_bytes(runner: ModelRunner, context_tokens: int) -> int:
    """What one decode step must read from memory: every weight but the embedding
    table (only its looked-up rows are read, unless it doubles as lm_head) and
    the KV cache of `context_tokens` tokens in all."""
    weights = runner.weight_bytes
    if not runner.model_config.tie_word_embeddings:
        weights -= runner.model.model.embed_tokens.weight.nbytes
    per_token = block_bytes(runner.model_config, 1, runner.dtype)
    return weights + context_tokens * per_token


def batch1_decode(runner: ModelRunner, args: argparse.Namespace, timer: Timer, num_steps: int) -> float:
    """Decode tokens/s for one sequence: prompt_len prompt, gen_len tokens, the prefill excluded."""
    prompt = list(range(1, args.prompt_len + 1))
    block_size = runner.block_size
    blocks = list(range(-(-(args.prompt_len + args.gen_len) // block_size)))
    params = SamplingParams(temperature=0.0, max_tokens=args.gen_len)
    decode_steps = args.gen_len - 1
    elapsed_ms: list[float] = []
    for seq_id in range(args.repeats + 1):
        runner.step(
            StepInput(
                new_seqs=[NewSequence(seq_id, prompt, len(prompt), params)],
                scheduled=[ScheduledSeq(seq_id, 0, len(prompt), blocks)],
            )
        )
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
    name: str, args: argparse.Namespace, device: torch.device, timer: Timer, bandwidth: float
) -> dict:
    shape = SHAPES[name]
    result: dict = {"shape": {k: v for k, v in shape.items() if not k.endswith("_token_id")}}
    if not args.skip_hf:
        result["hf_generate_batch1_tokens_per_s"] = hf_generate(shape, args, device, timer)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(shape))
        runner = make_runner(Path(tmp), args, device)
    result["weight_bytes"] = runner.weight_bytes
    result["num_kv_blocks"] = runner.num_blocks
    result["cuda_graph_batch_sizes"] = runner.cuda_graph_batch_sizes
    average_context = args.prompt_len + args.gen_len // 2
    roofline = bandwidth / step_read_bytes(runner, average_context)
    result["roofline_batch1_tokens_per_s"] = roofline
    for num_steps in (1, args.multi_step):
        tps = batch1_decode(runner, args, timer, num_steps)
        key = "batch1_decode" if num_steps == 1 else f"batch1_decode_multistep{num_steps}"
        result[f"{key}_tokens_per_s"] = tps
        result[f"{key}_pct_of_roofline"] = 100 * tps / roofline
    result["fixed_batch"] = fixed_batch_steps(runner, args, timer)
    for row in result["fixed_batch"]:
        if "step_ms" in row:
            row["pct_of_roofline"] = 100 * (row["read_bytes"] / bandwidth) / (row["step_ms"] / 1e3)
    if "hf_generate_batch1_tokens_per_s" in result:
        result["speedup_vs_hf_batch1"] = (
            result["batch1_decode_tokens_per_s"] / result["hf_generate_batch1_tokens_per_s"]
        )
    del runner
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout; pass --commit)"


def machine(device: torch.device) -> dict:
    info = {"host": platform.node(), "cpu_count": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30}
    return info


def print_table(results: dict) -> None:
    for name, r in results["models"].items():
        print(f"\n== {name}  (roofline batch-1 {r['roofline_batch1_tokens_per_s']:.0f} tok/s)")
        if "hf_generate_batch1_tokens_per_s" in r:
            print(f"HF generate batch 1          {r['hf_generate_batch1_tokens_per_s']:10.1f} tok/s")
        for key in [k for k in r if k.startswith("batch1_decode") and k.endswith("tokens_per_s")]:
            pct = r[key.replace("tokens_per_s", "pct_of_roofline")]
            print(f"{key[:-13]:<28} {r[key]:10.1f} tok/s   {pct:5.1f}% of roofline")
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
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.device, args.dtype = "tiny", "cpu", "float32"
        args.prompt_len, args.gen_len, args.context, args.fixed_steps = 16, 12, 32, 4
        args.batch_sizes, args.hf_tokens, args.bandwidth_gib, args.multi_step = "1,2,4", 8, 0.25, 4
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.models = args.models.split(",")
    unknown = set(args.models) - set(SHAPES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(SHAPES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = EngineConfig(model="", device=args.device).torch_device()
    timer = Timer(device)
    bandwidth = copy_bandwidth(device, args.bandwidth_gib, timer)
    results = {
        "commit": args.commit or git_commit(),
        "machine": machine(device),
        "torch": torch.__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "copy_bandwidth_bytes_per_s": bandwidth,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models": {},
    }
    for name in args.models:
        results["models"][name] = bench_model(name, args, device, timer, bandwidth)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s; results in {args.out}")
    print_table(results)


if __name__ == "__main__":
    main()
