"""The trainer on a CUDA device: bf16 LoRA and QLoRA's 4-bit base (run on the H200; skipped without CUDA)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from trainer_harness import chat_records, write_jsonl

from cairn.jobs.records import Progress
from cairn.services.trainer.backends import make_backend
from cairn.services.trainer.data.batches import Schedule
from cairn.services.trainer.data.prepare import prepare
from cairn.services.trainer.distributed import setup
from cairn.services.trainer.jobfile import spec_from_yaml
from cairn.services.trainer.loop import TrainLoop
from cairn.services.trainer.modeling import load_model, load_tokenizer, resolve_precision
from cairn.services.trainer.objectives import SftObjective
from cairn.services.trainer.plan import plan_from_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


_NO_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is None


@pytest.mark.parametrize(
    "method",
    [
        "lora",
        pytest.param(
            "qlora",
            marks=pytest.mark.skipif(_NO_BITSANDBYTES, reason="QLoRA needs bitsandbytes (cairn[qlora])"),
        ),
    ],
)
def test_adapters_train_in_bf16_on_the_gpu(method: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_records())
    args = {"learning_rate": 1e-2, "lr_scheduler": "constant", "max_steps": 30, "micro_batch_size": 2,
            "logging_steps": 5, "gradient_checkpointing": True}  # fmt: skip
    spec = {"base_model": "tiny@1", "method": method, "dataset": {"uri": str(data)}, "args": args}
    plan = plan_from_spec(spec_from_yaml(spec))
    dist = setup(0, 1, 0, deepspeed=False)
    try:
        precision = resolve_precision(plan.precision, dist.device)
        assert precision == "bf16"
        tokenizer = load_tokenizer(tiny_model_dir)
        rows = prepare(plan, Path, tokenizer).train
        model = load_model(tiny_model_dir, plan, dist.device, precision, deepspeed=False)
        if method == "qlora":
            import bitsandbytes as bnb

            assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        backend = make_backend(model, plan, dist, precision)
        reports: list[Progress] = []
        schedule = Schedule(len(rows), plan.micro_batch_size, 1, 1, plan.seed)
        objective = SftObjective(rows, tokenizer.pad_token_id)  # type: ignore[arg-type]
        loop = TrainLoop(
            backend, dist, plan, objective, None, schedule, 30,
            report=reports.append, on_checkpoint=lambda *_: None, checkpoint_root=tmp_path,
        )  # fmt: skip
        result = loop.run(0, {})
    finally:
        dist.close()
    assert result.final_train_loss < 0.5 * result.first_train_loss
    assert all(p.device.type == "cuda" for p in model.parameters() if p.requires_grad)
