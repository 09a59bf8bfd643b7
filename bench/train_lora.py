"""LoRA fine-tuning speed and memory at the Llama-3.1-8B shape: cairn's trainer against HF Trainer + PEFT.

    python bench/train_lora.py --out bench/results/train_lora.json
    python bench/train_lora.py --layers 2 --samples 64 --steps 3 --out /tmp/train_lora.json   # quick check

Random-init bf16 weights built on the GPU (no checkpoint, no hub) and
synthetic chat-like samples: log-normal lengths (median about 600 tokens, cut
at --max-length), the loss on each sample's answer (its last 30-70%). LoRA
r=16, alpha=32 on q/k/v/o/gate/up/down, AdamW at a constant 1e-4,
gradient checkpointing on, micro-batch --micro-batch-size. Measured after
--warmup steps over --steps steps, wall clock with the GPU synchronized:

  (a) cairn's loop (unpacked rows) against a plain HF `Trainer` + PEFT run
      on the same samples, batch size and LoRA config: tokens/s (non-padding
      tokens) and peak GPU memory;
  (b) cairn packed against unpacked on the same mixed-length samples;
  (c) QLoRA (NF4 base through bitsandbytes): peak memory and tokens/s; the
      random base is written to --scratch first (16 GB at full size), since
      4-bit quantization happens while a checkpoint loads.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from provenance import provenance, write_results

from cairn.services.trainer.backends import make_backend
from cairn.services.trainer.data.batches import Schedule
from cairn.services.trainer.data.encode import IGNORE, Sample
from cairn.services.trainer.data.packing import Row, pack, single_rows
from cairn.services.trainer.distributed import Dist
from cairn.services.trainer.jobfile import spec_from_yaml
from cairn.services.trainer.loop import TrainLoop
from cairn.services.trainer.modeling import attach_adapter, load_model
from cairn.services.trainer.objectives import SftObjective
from cairn.services.trainer.plan import TrainPlan, plan_from_spec

LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama_8b_config(layers: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=False,
        use_cache=False,
    )


def build_base(layers: int) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(llama_8b_config(layers), dtype=torch.bfloat16)
    model.config.use_cache = False
    return model


def synthetic_samples(count: int, max_length: int, vocab: int, seed: int) -> list[Sample]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.empty(count).log_normal_(mean=6.4, std=0.6, generator=generator).clamp(64, max_length)
    samples = []
    for length in lengths.int().tolist():
        ids = torch.randint(16, vocab, (length,), generator=generator).tolist()
        prompt = int(length * (0.3 + 0.4 * float(torch.rand((), generator=generator))))
        samples.append(Sample(ids, [IGNORE] * prompt + ids[prompt:]))
    return samples


def plan_for(args: argparse.Namespace, *, method: str, packing: bool) -> TrainPlan:
    spec = {
        "base_model": "bench@1",
        "method": method,
        "dataset": {"uri": "synthetic.jsonl"},
        "lora": {**LORA, "target_modules": TARGETS},
        "args": {
            "learning_rate": 1e-4,
            "lr_scheduler": "constant",
            "micro_batch_size": args.micro_batch_size,
            "max_steps": args.warmup + args.steps,
            "max_length": args.max_length,
            "packing": packing,
            "gradient_checkpointing": args.gradient_checkpointing,
            "precision": "bf16",
            "logging_steps": 1,
        },
    }
    return plan_from_spec(spec_from_yaml(spec))


@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    stats: dict[str, float] = {}
    yield stats
    torch.cuda.synchronize()
    stats["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30


def timed_steps(stamps: Sequence[float], tokens: Sequence[int], warmup: int) -> dict[str, float]:
    """Throughput over the steps after `warmup`: stamps[i] is when step i+1 ended."""
    seconds = [b - a for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)]
    counted = tokens[warmup : len(stamps)]
    return {
        "steps_timed": len(seconds),
        "tokens_per_s": sum(counted) / sum(seconds),
        "median_step_s": statistics.median(seconds),
        "tokens_per_step": statistics.mean(counted),
    }


def run_cairn(model: Any, plan: TrainPlan, rows: list[Row], args: argparse.Namespace) -> dict[str, float]:
    """cairn's loop on an already-built model (adapter attached here); returns its numbers."""
    dist = Dist(0, 1, 0, torch.device("cuda"))
    backend = make_backend(model, plan, dist, "bf16")
    objective = SftObjective(rows, pad_id=0)
    schedule = Schedule(len(rows), plan.micro_batch_size, 1, 1, plan.seed)
    total = plan.max_steps
    tokens = [sum(len(rows[i]) for m in schedule.micro_batches(step, 0) for i in m) for step in range(total)]
    stamps: list[float] = []

    def report(_progress: object) -> None:
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    loop = TrainLoop(backend, dist, plan, objective, None, schedule, total, report=report,
                     on_checkpoint=lambda *_: None, checkpoint_root=Path(args.scratch))  # fmt: skip
    loop.run(0, {})
    return timed_steps(stamps, tokens, args.warmup)


def run_hf_trainer(base: Any, samples: list[Sample], args: argparse.Namespace) -> dict[str, float]:
    """The same LoRA run through transformers' Trainer + PEFT, as a user would write it."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = get_peft_model(
        base,
        LoraConfig(task_type=TaskType.CAUSAL_LM, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                   target_modules=TARGETS),
    )  # fmt: skip
    batch_tokens: list[int] = []

    def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = (
                torch.tensor(f["input_ids"]),
                torch.tensor(f["labels"]),
                1,
            )
        batch_tokens.append(int(mask.sum()))
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    training_args = TrainingArguments(
        output_dir=str(Path(args.scratch) / "hf"),
        per_device_train_batch_size=args.micro_batch_size,
        max_steps=args.warmup + args.steps,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        bf16=True,
        gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        optim="adamw_torch_fused",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=42,
    )
    dataset = [{"input_ids": s.input_ids, "labels": s.labels} for s in samples]
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collate,
                      callbacks=[Clock()])  # fmt: skip
    trainer.train()
    result = timed_steps(stamps, batch_tokens, args.warmup)
    model.unload()
    return result


def run_qlora(directory: Path, samples: list[Sample], args: argparse.Namespace) -> dict[str, float]:
    """cairn's QLoRA path from a saved checkpoint: the base is quantized to NF4 while it loads."""
    plan = plan_for(args, method="qlora", packing=False)
    model = load_model(directory, plan, torch.device("cuda"), "bf16", deepspeed=False)
    return run_cairn(model, plan, single_rows(samples), args)


def measure(name: str, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    with peak_memory() as memory:
        result = fn()
    result.update(memory)
    print(f"{name:<24} {result['tokens_per_s']:10.0f} tok/s  {result['median_step_s'] * 1e3:8.1f} ms/step  "
          f"peak {result['peak_memory_gib']:6.1f} GiB", flush=True)  # fmt: skip
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (32: the full 8B shape)")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--skip-hf", action="store_true", help="leave out the HF Trainer baseline")
    parser.add_argument("--skip-qlora", action="store_true", help="leave out QLoRA (needs bitsandbytes)")
    parser.add_argument("--scratch", type=Path, default=None, help="for the QLoRA base checkpoint (16 GB)")
    parser.add_argument("--commit", help="commit to record when the tree is a copy without .git")
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_lora.json"))
    args = parser.parse_args(argv)
    if args.scratch is None:
        args.scratch = Path(tempfile.mkdtemp(prefix="cairn-train-bench-"))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench/train_lora.py needs a CUDA GPU")
    import peft
    import transformers

    base = build_base(args.layers)
    samples = synthetic_samples(args.samples, args.max_length, base.config.vocab_size, seed=1)
    versions = {"transformers": transformers.__version__, "peft": peft.__version__}
    results: dict[str, Any] = provenance(args, torch.device("cuda"), **versions) | {"runs": {}}
    runs = results["runs"]

    def cairn_lora(packing: bool) -> dict[str, float]:
        plan = plan_for(args, method="lora", packing=packing)
        model = attach_adapter(base, plan)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        rows = pack(samples, args.max_length) if packing else single_rows(samples)
        try:
            return run_cairn(model, plan, rows, args)
        finally:
            model.unload()

    runs["cairn_lora"] = measure("cairn LoRA", lambda: cairn_lora(False))
    runs["cairn_lora_packed"] = measure("cairn LoRA packed", lambda: cairn_lora(True))
    if not args.skip_hf:
        runs["hf_trainer_lora"] = measure(
            "HF Trainer + PEFT LoRA", lambda: run_hf_trainer(base, samples, args)
        )
        results["cairn_vs_hf_tokens_per_s"] = (
            runs["cairn_lora"]["tokens_per_s"] / runs["hf_trainer_lora"]["tokens_per_s"]
        )
    results["packed_vs_unpacked_tokens_per_s"] = (
        runs["cairn_lora_packed"]["tokens_per_s"] / runs["cairn_lora"]["tokens_per_s"]
    )
    if not args.skip_qlora:
        directory = Path(args.scratch) / "base"
        base.save_pretrained(directory, safe_serialization=True, max_shard_size="5GB")
        # The bf16 copy leaves the GPU first, so the peak is QLoRA's own.
        del base
        runs["cairn_qlora"] = measure("cairn QLoRA (NF4)", lambda: run_qlora(directory, samples, args))
    write_results(args.out, results)
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
