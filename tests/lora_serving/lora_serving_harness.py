"""Plumbing for the LoRA serving suite: services on one background event loop, a worker that
records which adapters shared each step, PEFT adapters made directly, and the PEFT-merged HF
model as the greedy oracle."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import torch

from cairn.services.scheduler.worker_client import LocalWorkerClient, WorkerClient, WorkerLost
from cairn.services.worker.step import StepInput, StepOutput

R = TypeVar("R")

# A memorization set: answers the tiny random model never produces, learnt by the LoRA job.
CHATS = [
    ("What is the capital of France?", "Paris is the capital."),
    ("Name a red fruit.", "A strawberry is red."),
    ("How many legs does a cat have?", "A cat has four legs."),
]
# Settings that make the tiny model (2 layers, hidden 64) answer every pair exactly, greedy.
TRAIN_ARGS = {
    "learning_rate": 2e-2,
    "max_steps": 60,
    "micro_batch_size": 4,
    "lr_scheduler": "constant",
    "logging_steps": 20,
    "seed": 0,
}


class RecordingWorker(LocalWorkerClient):
    """The in-process worker, noting for every step the adapters of the sequences it ran
    ("" for the base model) and every adapter load and unload; after `fail_after` steps it
    fails as a dead worker would."""

    def __init__(self, worker_id: str, fail_after: int | None = None) -> None:
        super().__init__(worker_id)
        self.fail_after = fail_after
        self.adapter_of: dict[int, str] = {}
        self.steps: list[frozenset[str]] = []
        self.events: list[tuple[str, str]] = []

    async def step(self, step: StepInput) -> StepOutput:
        if self.fail_after is not None and len(self.steps) >= self.fail_after:
            raise WorkerLost(f"worker {self.worker_id} was told to die")
        for new in step.new_seqs:
            self.adapter_of[new.seq_id] = new.adapter
        if step.scheduled:
            self.steps.append(frozenset(self.adapter_of[s.seq_id] for s in step.scheduled))
        return await super().step(step)

    async def load_adapter(self, name: str, source: str) -> Any:
        self.events.append(("load", name))
        return await super().load_adapter(name, source)

    async def unload_adapter(self, name: str) -> bool:
        self.events.append(("unload", name))
        return await super().unload_adapter(name)


class RecordingLauncher:
    """Recording in-process workers; `fail_after[i]` applies to the i-th one launched."""

    def __init__(self, fail_after: dict[int, int] | None = None) -> None:
        self.fail_after = fail_after or {}
        self.workers: list[RecordingWorker] = []

    async def launch(self, worker_id: str) -> WorkerClient:
        worker = RecordingWorker(worker_id, self.fail_after.get(len(self.workers)))
        self.workers.append(worker)
        return worker

    async def terminate(self, worker_id: str) -> None:
        return None


def chat_records() -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in CHATS
    ]


def make_peft_adapter(
    base_dir: Path, out: Path, *, r: int, targets: Sequence[str], seed: int, base_ref: str = ""
) -> Path:
    """A PEFT LoRA adapter of `base_dir` with random, clearly non-zero weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0)
    peft = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.3)
    peft.save_pretrained(out)
    if base_ref:
        path = out / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": base_ref}))
    return out


@cache
def _merged(base_dir: Path, adapter_dir: Path | None) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval()


def hf_greedy(
    base_dir: Path, adapter_dir: Path | None, prompt_ids: Sequence[int], max_tokens: int
) -> list[int]:
    """Greedy tokens of the PEFT-merged HF model (the base model alone when `adapter_dir` is None),
    ending at the first end-of-sequence token as the scheduler does."""
    model = _merged(base_dir, adapter_dir)
    ids = torch.tensor([list(prompt_ids)])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False
        )
    return out[0, ids.shape[1] :].tolist()


def chat_prompt_ids(tokenizer: Any, question: str) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=True
    )
    return list(encoded["input_ids"])
