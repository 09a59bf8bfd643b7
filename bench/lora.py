"""Multi-LoRA throughput: the reference workload with 8 different rank-16 adapters mixed
uniformly over the requests, next to the base model alone, in the same run.

    python bench/lora.py --models 8b --out bench/results/lora_8b_h200.json
    python bench/lora.py --models 0.5b --out bench/results/lora_0.5b_h200.json
    python bench/lora.py --tiny --out /tmp/lora.json                      # CPU smoke run

Random-init weights (`load_format="dummy"`, the shapes of engine_decode.py), bf16, the
in-process engine (scheduler Engine + ModelRunner) as bench/throughput.py drives it. The
adapters are PEFT directories written here (random A and B on every q/k/v/o/gate/up/down
projection, rank 16, small enough that the outputs stay finite). Variants, each a fresh
engine on the same prompts:

  base        max_loras 0: the base model with no LoRA machinery at all (the reference);
  lora-base   max_loras 8 with the 8 adapters resident, every request on the base model:
              what LoRA-enabled serving costs requests that use no adapter;
  lora-mixed  max_loras 8, request i runs with adapter i % 8: the issue's workload.

Adapters are loaded during the warm-up, outside the timed run. The target (issue #9):
lora-mixed output tokens/s >= 80% of base.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
from engine_decode import SHAPES
from provenance import provenance, write_results
from safetensors.torch import save_file
from throughput import add_engine_arguments, latency_summary, load_workload, make_llm, release_memory

from cairn.services.scheduler.offline import LLM
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.sampling_params import SamplingParams

NUM_ADAPTERS = 8
RANK = 16
VARIANTS = ("base", "lora-base", "lora-mixed")


def write_adapter(shape: dict, out: Path, seed: int, rank: int) -> Path:
    """A PEFT LoRA adapter of `shape` on all seven projections, random A and B."""
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    head_dim = shape.get("head_dim") or hidden // shape["num_attention_heads"]
    q, kv = shape["num_attention_heads"] * head_dim, shape["num_key_value_heads"] * head_dim
    # projection -> (in, out)
    sizes = {
        "self_attn.q_proj": (hidden, q),
        "self_attn.k_proj": (hidden, kv),
        "self_attn.v_proj": (hidden, kv),
        "self_attn.o_proj": (q, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(shape["num_hidden_layers"]):
        for name, (fan_in, fan_out) in sizes.items():
            prefix = f"base_model.model.model.layers.{layer}.{name}"
            a = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
            b = torch.randn(fan_out, rank, generator=generator) * 0.01
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16)
    out.mkdir(parents=True)
    save_file(tensors, out / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": [name.split(".")[1] for name in sizes],
        "bias": "none",
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def run_variant(llm: LLM, prompts: list[list[int]], output_len: int, adapters: list[str]) -> dict:
    """`adapters`: each prompt's adapter directory, "" for the base model."""
    # Warm-up: kernels, graphs, and every adapter loaded into its slot before the timed run.
    warm = list(dict.fromkeys(adapters))
    warm_params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    llm.generate([prompts[0][:64]] * len(warm), warm_params, adapter=warm)
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    start = time.perf_counter()
    results = llm.generate(prompts, params, adapter=adapters)
    wall = time.perf_counter() - start
    generated = sum(len(r.outputs[0].token_ids) for r in results)
    if generated != len(prompts) * output_len:
        raise RuntimeError(f"generated {generated} tokens, expected {len(prompts) * output_len}")
    return {
        "requests": len(prompts),
        "adapters": len({a for a in adapters if a}),
        "generated_tokens": generated,
        "wall_s": wall,
        "output_tokens_per_s": generated / wall,
        "ttft_s": latency_summary([r.first_token_time - r.arrival_time for r in results]),
        "time_per_output_token_s": latency_summary(
            [(r.finish_time - r.first_token_time) / max(output_len - 1, 1) for r in results]
        ),
        "num_kv_blocks": llm.info.num_blocks,
        "preemptions": llm.engine.scheduler.num_preemptions,
    }


def bench_model(name: str, args: argparse.Namespace, workload: ModuleType) -> dict:
    shape = SHAPES[name]
    vocab = min(args.workload_vocab, shape["vocab_size"])
    prompts, output_len = workload.reference_workload(
        n=args.requests, vocab=vocab, output_len=args.output_len
    )
    result: dict = {"shape": {k: v for k, v in shape.items() if not k.endswith("_token_id")}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "model").mkdir()
        (root / "model" / "config.json").write_text(json.dumps(shape))
        refs = [
            str(write_adapter(shape, root / f"adapter-{i}", seed=i, rank=RANK)) for i in range(NUM_ADAPTERS)
        ]
        mixed = [refs[i % NUM_ADAPTERS] for i in range(len(prompts))]
        for variant in args.variants:
            max_loras = 0 if variant == "base" else NUM_ADAPTERS
            llm = make_llm(root / "model", args, max_loras=max_loras, max_lora_rank=RANK)
            try:
                if variant == "lora-base":
                    # The adapters resident, as a serving replica's would be; no request uses them.
                    llm.generate([prompts[0][:16]] * NUM_ADAPTERS, SamplingParams(max_tokens=1), adapter=refs)
                adapters = mixed if variant == "lora-mixed" else [""] * len(prompts)
                result[variant] = run_variant(llm, prompts, output_len, adapters)
            finally:
                llm.close()
                del llm
                release_memory()
            print(f"{name} {variant}: {result[variant]['output_tokens_per_s']:.0f} output tok/s", flush=True)
    if "base" in result:
        base = result["base"]["output_tokens_per_s"]
        for variant in ("lora-base", "lora-mixed"):
            if variant in result:
                result[f"{variant}_vs_base"] = result[variant]["output_tokens_per_s"] / base
    return result


def print_table(results: dict) -> None:
    for name, r in results["models"].items():
        print(
            f"\n== {name}: {results['settings']['requests']} requests, {NUM_ADAPTERS} adapters of rank {RANK}"
        )
        for variant in VARIANTS:
            if variant in r:
                v = r[variant]
                ratio = r.get(f"{variant}_vs_base")
                note = "" if ratio is None else f"   {100 * ratio:5.1f}% of base"
                print(
                    f"{variant:<11} {v['output_tokens_per_s']:10.0f} output tok/s ({v['wall_s']:.1f} s, "
                    f"TPOT median {v['time_per_output_token_s']['median'] * 1e3:.1f} ms){note}"
                )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_engine_arguments(parser)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {VARIANTS}")
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.device, args.dtype = "tiny", "cpu", "float32"
        args.requests, args.output_len, args.max_num_seqs, args.workload_vocab = 16, 8, 16, 512
        args.max_num_batched_tokens, args.cpu_kv_cache_gb = 1024, 0.25
    args.models = args.models.split(",")
    args.variants = args.variants.split(",")
    unknown = set(args.models) - set(SHAPES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(SHAPES)}")
    if set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(set(args.variants) - set(VARIANTS))}; choose from {VARIANTS}")
    args.torch_device = EngineConfig(model="", device=args.device).torch_device()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workload = load_workload(args.workload)
    results = provenance(args, args.torch_device) | {"models": {}}
    for name in args.models:
        results["models"][name] = bench_model(name, args, workload)
        write_results(args.out, results)
    print(f"results in {args.out}")
    print_table(results)


if __name__ == "__main__":
    main()
