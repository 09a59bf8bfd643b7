"""Tensor parallelism: one replica split over 1, 2 or 4 GPUs (NCCL), against HF transformers
with device_map="auto" (layers spread over the same GPUs) in the same run.

    python bench/tp.py --models 8b --tp 1,2 --out bench/results/tp_8b_h200x2.json        # 2 GPUs
    python bench/tp.py --models 70b --tp 2 --out bench/results/tp_70b_h200x2.json        # 2 GPUs
    python bench/tp.py --models 8b --tp 1,2,4 --out bench/results/tp_8b_h200x4.json     # 4 GPUs
    python bench/tp.py --models 70b --tp 2,4 --out bench/results/tp_70b_h200x4.json     # 4 GPUs
    python bench/tp.py --tiny --out /tmp/tp.json                     # CPU smoke run (gloo)

In-process, no Ray: rank 0 runs here and ranks 1.. are child processes on the next GPUs
(`group.spawn_local_group`), as the offline `LLM` runs them. Random-init weights
(`load_format="dummy"`, each rank drawing only its shard on its GPU) at the Llama-3.1-8B
and Llama-3.1-70B shapes in bf16. For each model and each tensor-parallel size:

  (a) batch-1 decode tokens/s: prompt 128, 256 generated, one runner step per token,
      and again with multi-step decode; next to each rank's HBM roofline (its share of
      the weights and KV cache over its copy bandwidth; the all-reduces are extra);
  (b) the reference workload (/work/shared/bench/workload.py: 512 requests, log-normal
      prompts of mean ~348 tokens, 256 output tokens each, EOS ignored, greedy) through
      `LLM.generate`: output tokens/s, TTFT, time per output token;
  (c) once per model, with the model spread over the largest size's GPUs the way
      `from_pretrained(device_map="auto")` places it (it runs the layers one GPU after
      the other), when its weights fit there: HF `generate` batch-1 tokens/s, and HF
      `generate_batch` (continuous batching) output tokens/s on the first `--hf-requests`
      workload prompts (32; the whole workload would not fit a 10-minute slot).

A size whose weights do not fit its GPUs (70B on one) or that needs more GPUs than the
host has is recorded as skipped. `--quick` (fewer requests and tokens) keeps a 4-GPU run
of one model inside a 10-minute slot.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from engine_decode import SHAPES, Phases, Timer, batch1_decode, run_models
from throughput import add_engine_arguments, engine_throughput, load_workload, make_llm, release_memory

from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.group import open_runner
from cairn.services.worker.kv_cache import block_bytes

MODELS = {
    **SHAPES,
    "70b": {
        **SHAPES["8b"],
        "hidden_size": 8192,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "intermediate_size": 28672,
    },
}


def parameter_count(shape: dict) -> int:
    hidden, layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    head_dim = hidden // shape["num_attention_heads"]
    attention = hidden * head_dim * (2 * shape["num_attention_heads"] + 2 * shape["num_key_value_heads"])
    mlp = 3 * hidden * shape["intermediate_size"]
    embeddings = vocab * hidden * (1 if shape.get("tie_word_embeddings") else 2)
    return layers * (attention + mlp + 2 * hidden) + embeddings + hidden


def fits(shape: dict, gpus: int, args: argparse.Namespace) -> str | None:
    """Why `shape` cannot run on `gpus` devices here, or None when it can."""
    if args.device == "cpu":
        return None
    available = torch.cuda.device_count()
    if gpus > available:
        return f"needs {gpus} GPUs, the host has {available}"
    weights = parameter_count(shape) * torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    memory = torch.cuda.get_device_properties(0).total_memory * args.gpu_memory_utilization
    if weights / gpus > 0.85 * memory:
        return f"{weights / 2**30:.0f} GiB of weights do not fit {gpus} GPU(s) of {memory / 2**30:.0f} GiB"
    return None


def engine_config(model_dir: Path, tp: int, args: argparse.Namespace, max_num_seqs: int) -> EngineConfig:
    return EngineConfig(
        model=str(model_dir),
        load_format="dummy",
        dtype=args.dtype,
        device=args.device,
        tensor_parallel_size=tp,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        cpu_kv_cache_gb=args.cpu_kv_cache_gb,
        enforce_eager=args.enforce_eager,
    )


def decode(model_dir: Path, tp: int, args: argparse.Namespace, timer: Timer, bandwidth: float) -> dict:
    """Batch-1 decode of one replica split over `tp` ranks."""
    runner = open_runner(engine_config(model_dir, tp, args, max_num_seqs=8))
    try:
        runner.load()
        runner.profile_and_allocate_kv_cache()
        context = args.prompt_len + args.gen_len // 2
        rank_bytes = runner.weight_bytes + context * block_bytes(runner.cache_config, 1, runner.dtype)
        result = {
            "weight_bytes_per_rank": runner.weight_bytes,
            "num_kv_blocks": runner.num_blocks,
            "cuda_graph_batch_sizes": runner.cuda_graph_batch_sizes,
            "rank_roofline_batch1_tokens_per_s": bandwidth / rank_bytes,
        }
        for num_steps in (1, args.multi_step):
            key = "batch1_decode" if num_steps == 1 else f"batch1_decode_multistep{num_steps}"
            tokens_per_s = batch1_decode(runner, args, timer, num_steps)
            result[f"{key}_tokens_per_s"] = tokens_per_s
            result[f"{key}_pct_of_rank_roofline"] = (
                100 * tokens_per_s / result["rank_roofline_batch1_tokens_per_s"]
            )
        return result
    finally:
        if tp > 1:
            runner.close()
        del runner
        release_memory()


def workload_throughput(
    model_dir: Path, tp: int, args: argparse.Namespace, prompts: list[list[int]], output_len: int
) -> dict:
    llm = make_llm(model_dir, args, tensor_parallel_size=tp)
    try:
        return engine_throughput(llm, prompts, output_len)
    finally:
        llm.close()
        del llm
        release_memory()


def hf_device_map_generate(
    shape: dict, gpus: int, args: argparse.Namespace, timer: Timer, prompts: list[list[int]], output_len: int
) -> dict:
    """HF `generate` batch-1 tokens/s, and `generate_batch` (continuous batching) on the first
    `--hf-requests` workload prompts, random weights placed layer by layer over `gpus` devices
    as `from_pretrained(device_map="auto")` would (accelerate's balanced map and hooks)."""
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, args.dtype)
    # A deep copy: transformers writes rope_theta into the rope_scaling dict it is given.
    fields = {k: copy.deepcopy(v) for k, v in shape.items() if k not in ("architectures", "model_type")}
    config = AutoConfig.for_model(shape["model_type"], **fields)
    # Parameters on the meta device, buffers (the rotary table) real; weights drawn where they go.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    if args.device == "cpu":
        device_map = {"": "cpu"}
    else:
        memory = {i: int(torch.cuda.get_device_properties(i).total_memory * 0.85) for i in range(gpus)}
        device_map = infer_auto_device_map(
            model, max_memory=memory, no_split_module_classes=model._no_split_modules, dtype=dtype
        )
    placed = {}
    for name, param in model.named_parameters():
        owner = max((m for m in device_map if m == "" or name == m or name.startswith(m + ".")), key=len)
        device = device_map[owner]
        value = torch.empty(param.shape, dtype=dtype, device=device)
        value.fill_(1.0) if name.endswith("norm.weight") else value.normal_(0.0, 0.02)
        set_module_tensor_to_device(model, name, device, value=value)
        placed[str(device)] = placed.get(str(device), 0) + value.nbytes
    model = dispatch_model(model, device_map)
    first = next(iter(placed))
    device = "cpu" if args.device == "cpu" else f"cuda:{first}"
    prompt = torch.arange(1, args.prompt_len + 1, device=device)[None]
    tokens = args.hf_tokens

    def generate() -> None:
        model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=0,
        )

    result = {
        "devices": sorted(placed),
        "bytes_per_device": placed,
        "batch1_tokens_per_s": tokens / timer.median_ms(generate, repeats=args.hf_repeats) * 1e3,
    }
    if args.hf_requests:
        try:
            result["workload"] = hf_workload(model, prompts[: args.hf_requests], output_len)
        except Exception as error:
            result["workload"] = _failure(error)
    return result


def hf_workload(model: torch.nn.Module, prompts: list[list[int]], output_len: int) -> dict:
    """transformers' continuous batching on `prompts`, greedy, `output_len` tokens each."""
    from transformers import GenerationConfig

    generation = GenerationConfig(
        max_new_tokens=output_len, do_sample=False, eos_token_id=-1, pad_token_id=0, use_cache=True
    )
    start = time.perf_counter()
    outputs = model.generate_batch(inputs=prompts, generation_config=generation)
    wall = time.perf_counter() - start
    generated = sum(len(o.generated_tokens) for o in outputs.values())
    return {
        "requests": len(prompts),
        "wall_s": wall,
        "generated_tokens": generated,
        "output_tokens_per_s": generated / wall,
    }


def _failure(error: BaseException) -> dict:
    # A failed variant is a result to record, not a reason to lose the rest of the run.
    return {
        "error": "".join(traceback.format_exception_only(error)).strip(),
        "traceback": traceback.format_exc()[-4000:],
    }


def bench_model(
    name: str, args: argparse.Namespace, timer: Timer, bandwidth: float, workload: object, phases: dict
) -> dict:
    shape = MODELS[name]
    phase = Phases(phases, name)
    vocab = min(args.workload_vocab, shape["vocab_size"])
    prompts, output_len = workload.reference_workload(
        n=args.requests, vocab=vocab, output_len=args.output_len
    )
    result: dict = {
        "shape": {k: v for k, v in shape.items() if not k.endswith("_token_id")},
        "parameters": parameter_count(shape),
        "tp": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        (model_dir / "config.json").write_text(json.dumps(shape))
        for tp in args.tp:
            if (reason := fits(shape, tp, args)) is not None:
                result["tp"][tp] = {"skipped": reason}
                continue
            entry: dict = {}
            try:
                with phase(f"tp{tp}/batch1_decode"):
                    entry["decode"] = decode(model_dir, tp, args, timer, bandwidth)
                with phase(f"tp{tp}/workload"):
                    entry["workload"] = workload_throughput(model_dir, tp, args, prompts, output_len)
            except Exception as error:
                entry |= _failure(error)
            result["tp"][tp] = entry
    hf_gpus = max(args.tp)
    if not args.skip_hf:
        if (reason := fits(shape, hf_gpus, args)) is not None:
            result["hf_device_map"] = {"skipped": reason}
        else:
            with phase("hf_device_map"):
                try:
                    result["hf_device_map"] = hf_device_map_generate(
                        shape, hf_gpus, args, timer, prompts, output_len
                    )
                except Exception as error:
                    result["hf_device_map"] = _failure(error)
                release_memory()
    single = result["tp"].get(1, {}).get("workload")
    for entry in result["tp"].values():
        if single is not None and "workload" in entry:
            entry["workload_speedup_vs_tp1"] = (
                entry["workload"]["output_tokens_per_s"] / single["output_tokens_per_s"]
            )
    return result


def print_table(results: dict) -> None:
    multi_step = f"batch1_decode_multistep{results['settings']['multi_step']}_tokens_per_s"
    for name, r in results["models"].items():
        print(f"\n== {name} ({r['parameters'] / 1e9:.1f} B parameters)")
        hf = r.get("hf_device_map", {})
        if "batch1_tokens_per_s" in hf:
            devices = ", ".join(hf["devices"])
            print(f"HF generate, device_map over {devices}: {hf['batch1_tokens_per_s']:8.1f} tok/s batch 1")
            w = hf.get("workload", {})
            if "output_tokens_per_s" in w:
                rate = w["output_tokens_per_s"]
                print(f"HF generate_batch, {w['requests']} workload requests: {rate:8.0f} output tok/s")
            elif w:
                print(f"HF generate_batch: {w['error']}")
        elif hf:
            print(f"HF generate: {hf.get('skipped') or hf.get('error')}")
        for tp, entry in r["tp"].items():
            if "skipped" in entry or "error" in entry:
                print(f"TP {tp}: {entry.get('skipped') or entry['error']}")
                continue
            d, w = entry["decode"], entry["workload"]
            print(
                f"TP {tp}: batch 1 {d['batch1_decode_tokens_per_s']:8.1f} tok/s "
                f"({d['batch1_decode_pct_of_rank_roofline']:4.1f}% of a rank's roofline), "
                f"multi-step {d[multi_step]:8.1f}; "
                f"workload {w['output_tokens_per_s']:8.0f} output tok/s, "
                f"TTFT median {w['ttft_s']['median'] * 1e3:.0f} ms, "
                f"TPOT median {w['time_per_output_token_s']['median'] * 1e3:.1f} ms"
            )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_engine_arguments(parser, MODELS, default_models="8b", device="cuda")
    parser.add_argument("--tp", help="comma-separated tensor-parallel sizes (default 1,2; --tiny: 1,2,4)")
    parser.add_argument("--quick", action="store_true", help="fewer requests and tokens, for a short lease")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=256)
    parser.add_argument(
        "--multi-step", type=int, default=8, help="tokens per runner call in the multi-step run"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--bandwidth-gib", type=float, default=4.0, help="size of the copy that measures bandwidth"
    )
    parser.add_argument("--hf-tokens", type=int, default=64)
    parser.add_argument("--hf-repeats", type=int, default=2)
    parser.add_argument(
        "--hf-requests", type=int, default=32, help="workload prompts HF generate_batch runs (0: none)"
    )
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.gen_len, args.requests, args.hf_tokens, args.hf_repeats = 1, 128, 256, 32, 1
        args.hf_requests = min(args.hf_requests, 16)
    if args.tiny:
        args.models, args.tp, args.device, args.dtype = "tiny", args.tp or "1,2,4", "cpu", "float32"
        args.prompt_len, args.gen_len, args.multi_step, args.repeats = 16, 12, 4, 1
        args.requests, args.output_len, args.max_num_seqs, args.workload_vocab = 8, 8, 8, 512
        # transformers' continuous batching idles for seconds on the CPU: GPU runs only.
        args.hf_requests = 0
        args.max_num_batched_tokens, args.max_model_len, args.hf_tokens, args.bandwidth_gib = (
            512,
            2304,
            8,
            0.25,
        )
    args.models = args.models.split(",")
    args.tp = [int(size) for size in (args.tp or "1,2").split(",")]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workload = load_workload(args.workload)

    def bench(name: str, device: torch.device, timer: Timer, bandwidth: float, phases: dict) -> dict:
        return bench_model(name, args, timer, bandwidth, workload, phases)

    print_table(run_models(args, bench))


if __name__ == "__main__":
    main()
