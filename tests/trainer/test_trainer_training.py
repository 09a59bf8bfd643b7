"""The training core, called directly: packing is exact, ZeRO follows plain PyTorch, resuming is seamless.

DeepSpeed keeps process-wide state (its cached process groups) that outlives
the process group it was built on, so each DeepSpeed run gets a fresh
process, as it does in a real job.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_harness import write_jsonl

from cairn.jobs.records import Progress
from cairn.services.trainer import checkpoints
from cairn.services.trainer.backends import make_backend
from cairn.services.trainer.data.batches import Schedule, collate
from cairn.services.trainer.data.packing import Row
from cairn.services.trainer.data.prepare import prepare
from cairn.services.trainer.distributed import Dist, setup
from cairn.services.trainer.jobfile import spec_from_yaml
from cairn.services.trainer.loop import TrainLoop
from cairn.services.trainer.modeling import load_model, load_tokenizer
from cairn.services.trainer.objectives import SftObjective, lm_loss_sum
from cairn.services.trainer.plan import TrainPlan, plan_from_spec

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conversations from 3 to 40 words long, so packing fills rows unevenly."""
    records = []
    for i in range(12):
        question = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + 3 * i))
        answer = " ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(2 + i % 5))
        records.append({"src": question, "tgt": answer})
    return write_jsonl(tmp_path_factory.mktemp("mixed") / "mixed.jsonl", records)


def _plan(data: Path, **args: object) -> TrainPlan:
    base = {"learning_rate": 1e-3, "lr_scheduler": "constant", "micro_batch_size": 2, "max_steps": 6,
            "logging_steps": 1, "max_length": 128}  # fmt: skip
    spec = {"base_model": "tiny@1", "method": args.pop("method", "sft"), "dataset": {"uri": str(data)},
            "args": {**base, **args}}  # fmt: skip
    return plan_from_spec(spec_from_yaml(spec))


@pytest.fixture
def single_rank() -> Iterator[Dist]:
    dist = setup(0, 1, 0, deepspeed=False)
    yield dist
    dist.close()


def test_packed_rows_give_the_unpacked_loss_and_gradients(
    tiny_model_dir: Path, mixed_data: Path, single_rank: Dist
) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    unpacked = prepare(_plan(mixed_data), Path, tokenizer)
    packed = prepare(_plan(mixed_data, packing=True), Path, tokenizer)
    assert len(packed.train) < len(unpacked.train)

    def loss_and_grads(rows: list[Row]) -> tuple[float, dict[str, torch.Tensor]]:
        model = load_model(tiny_model_dir, _plan(mixed_data), single_rank.device, "fp32", deepspeed=False)
        batch = collate(rows, tokenizer.pad_token_id)
        logits = model(**batch.model_inputs(single_rank.device), use_cache=False).logits
        loss = lm_loss_sum(logits, batch.labels) / batch.num_labels
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_u, grads_u = loss_and_grads(unpacked.train)  # type: ignore[arg-type]
    loss_p, grads_p = loss_and_grads(packed.train)  # type: ignore[arg-type]
    assert loss_p == pytest.approx(loss_u, rel=1e-5)
    for name, grad in grads_u.items():
        torch.testing.assert_close(grads_p[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    # Without the position restarts the samples would attend across each other: a different loss.
    leaky = [Row(r.input_ids, r.labels) for r in packed.train]  # type: ignore[union-attr]
    loss_leaky, _ = loss_and_grads(leaky)
    assert abs(loss_leaky - loss_u) > 1e-3


def _train(
    model_dir: Path, plan: TrainPlan, dist: Dist, tokenizer: Any, checkpoint_root: Path, *, start: int = 0,
    stop_after: int | None = None, state: dict[str, Any] | None = None, resume_from: Path | None = None,
) -> tuple[list[Progress], list[int]]:  # fmt: skip
    """Train `plan` on one rank; returns the reports and the checkpoint steps recorded."""
    torch.manual_seed(plan.seed)
    data = prepare(plan, Path, tokenizer)
    model = load_model(model_dir, plan, dist.device, "fp32", deepspeed=plan.zero_stage > 0)
    backend = make_backend(model, plan, dist, "fp32")
    train = SftObjective(data.train, tokenizer.pad_token_id)  # type: ignore[arg-type]
    schedule = Schedule(len(train), plan.micro_batch_size, plan.gradient_accumulation_steps, 1, plan.seed)
    total = schedule.total_steps(plan.num_epochs, plan.max_steps)
    reports: list[Progress] = []
    saved: list[int] = []
    if resume_from is not None:
        state = checkpoints.load(backend, resume_from)

    class Stop(Exception):
        pass

    def report(progress: Progress) -> None:
        reports.append(progress)
        if stop_after is not None and progress.step >= stop_after:
            raise Stop()

    loop = TrainLoop(
        backend, dist, plan, train, None, schedule, total,
        report=report, on_checkpoint=lambda step, path: saved.append(step), checkpoint_root=checkpoint_root,
    )  # fmt: skip
    with contextlib.suppress(Stop):
        loop.run(start, state or {})
    return reports, saved


def _curve(model_dir: Path, plan: TrainPlan, checkpoint_root: Path) -> list[float]:
    """Per-step losses of `plan` on one rank (its own process group; run it in a fresh process)."""
    dist = setup(0, 1, 0, deepspeed=plan.zero_stage > 0)
    try:
        reports, _ = _train(model_dir, plan, dist, load_tokenizer(model_dir), checkpoint_root)
    finally:
        dist.close()
    return [r.loss for r in reports]  # type: ignore[misc]


# Both stages, and CPU offload of the optimizer state (ZeRO-2) and of the parameters too (ZeRO-3).
ZERO_VARIANTS = {
    "zero2-offload": {"zero_stage": 2, "zero_offload": True},
    "zero3-offload": {"zero_stage": 3, "zero_offload": True},
}


@pytest.fixture(scope="module")
def curves(
    tiny_model_dir: Path, mixed_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[float]]:
    """The plain curve in this process, each ZeRO variant's in a process of its own, two at a time."""
    root = tmp_path_factory.mktemp("curves")
    plans = {
        name: _plan(mixed_data, gradient_accumulation_steps=2, **args) for name, args in ZERO_VARIANTS.items()
    }
    with ProcessPoolExecutor(
        2, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1
    ) as pool:
        futures = {
            name: pool.submit(_curve, tiny_model_dir, plan, root / name) for name, plan in plans.items()
        }
        plain = _curve(tiny_model_dir, _plan(mixed_data, gradient_accumulation_steps=2), root / "plain")
        return {"plain": plain, **{name: future.result() for name, future in futures.items()}}


@pytest.mark.parametrize("variant", list(ZERO_VARIANTS))
def test_deepspeed_zero_follows_the_plain_loss_curve(curves: dict[str, list[float]], variant: str) -> None:
    plain, curve = curves["plain"], curves[variant]
    assert len(curve) == len(plain) == 6
    assert curve[-1] < curve[0]
    assert curve == pytest.approx(plain, rel=1e-4)


def test_resuming_from_a_checkpoint_continues_the_same_curve(
    tiny_model_dir: Path, mixed_data: Path, single_rank: Dist, tmp_path: Path
) -> None:
    plan = _plan(mixed_data, method="lora", learning_rate=1e-2, save_steps=2, save_total_limit=1,
                 lr_scheduler="cosine")  # fmt: skip
    tokenizer = load_tokenizer(tiny_model_dir)
    whole, _ = _train(tiny_model_dir, plan, single_rank, tokenizer, tmp_path / "whole")
    first, saved = _train(tiny_model_dir, plan, single_rank, tokenizer, tmp_path / "cut", stop_after=5)
    assert saved == [2, 4]
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["step-000000004"]  # save_total_limit=1
    rest, _ = _train(tiny_model_dir, plan, single_rank, tokenizer, tmp_path / "cut", start=4,
                     resume_from=checkpoints.checkpoint_dir(tmp_path / "cut", 4))  # fmt: skip
    assert [r.step for r in rest] == [5, 6]
    resumed = [r.loss for r in first[:4]] + [r.loss for r in rest]
    assert resumed == pytest.approx([r.loss for r in whole], rel=1e-5)
