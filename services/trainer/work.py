"""The trainer's job entry point (`cairn.services.trainer.work:run`), executed by a runner on every rank.

Resolve and fetch the base model and data, build model, backend and
objective, compute DPO reference log-probabilities while the weights are still
the base's, resume from the job's last checkpoint, train, and (rank 0)
publish the result with its lineage.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from cairn.jobs.context import JobContext
from cairn.jobs.datasets import fetch
from cairn.jobs.records import JobResult

from . import checkpoints, publish
from .backends import Backend, make_backend
from .convert import spec_from_dict
from .data.batches import Schedule
from .data.encode import PairSample
from .data.prepare import PreparedData, prepare
from .distributed import Dist, setup
from .loop import Objective, TrainLoop
from .modeling import load_model, load_tokenizer, resolve_precision
from .objectives import DpoObjective, SftObjective, reference_logprobs
from .plan import TrainPlan, plan_from_spec

logger = logging.getLogger("cairn.trainer")


def _registry(settings: dict[str, Any]) -> Any:
    from cairn.services.registry.client import RegistryClient

    return RegistryClient(settings.get("registry") or None)


def run(ctx: JobContext) -> JobResult:
    plan = plan_from_spec(spec_from_dict(ctx.spec))
    torch.manual_seed(plan.seed)
    settings = ctx.settings
    cache_dir = Path(settings["cache_dir"]) if settings.get("cache_dir") else None
    registry = _registry(settings)
    try:
        base = registry.resolve(plan.base_model)
        base_ref = base.ref
        logger.info("base model %s resolves to %s", plan.base_model, base_ref)
        base_dir = registry.materialize(base_ref, cache_dir)
        tokenizer = load_tokenizer(base_dir)

        def fetch_file(uri: str) -> Path:
            return fetch(uri, ctx.work_dir / "data", registry, cache_dir)

        data = prepare(plan, fetch_file, tokenizer)
        dist = setup(ctx.rank, ctx.world_size, ctx.local_rank, deepspeed=plan.zero_stage > 0)
        try:
            return _train(ctx, plan, dist, registry, base_ref, base_dir, tokenizer, data)
        finally:
            dist.close()
    finally:
        registry.close()


def _train(
    ctx: JobContext,
    plan: TrainPlan,
    dist: Dist,
    registry: Any,
    base_ref: str,
    base_dir: Path,
    tokenizer: Any,
    data: PreparedData,
) -> JobResult:
    precision = resolve_precision(plan.precision, dist.device)
    model = load_model(base_dir, plan, dist.device, precision, deepspeed=plan.zero_stage > 0)
    backend = make_backend(model, plan, dist, precision)
    train, evaluation = _objectives(plan, backend, dist, tokenizer, data, ctx)
    schedule = Schedule(len(train), plan.micro_batch_size, plan.gradient_accumulation_steps, dist.world_size,
                        plan.seed)  # fmt: skip
    total = schedule.total_steps(plan.num_epochs, plan.max_steps)
    checkpoint_root = ctx.work_dir / "checkpoints"
    start, state = 0, {}
    if ctx.resume_from is not None:
        state = checkpoints.load(backend, Path(ctx.resume_from.path))
        start = ctx.resume_from.step
        logger.info("resumed from the checkpoint at step %d of %d", start, total)
    loop = TrainLoop(
        backend, dist, plan, train, evaluation, schedule, total,
        report=ctx.report,
        on_checkpoint=ctx.record_checkpoint,
        checkpoint_root=checkpoint_root,
    )  # fmt: skip
    result = loop.run(start, state)
    published_state = backend.state_for_publishing()
    metrics = {"first_train_loss": result.first_train_loss, "final_train_loss": result.final_train_loss}
    if result.final_eval_loss is not None:
        metrics["final_eval_loss"] = result.final_eval_loss
    details: dict[str, Any] = {"steps": result.steps, "base_model": base_ref, "dataset_sha256": data.sha256}
    outcome = JobResult(metrics=metrics, details=details)
    if dist.is_main:
        outcome = _publish(ctx, plan, backend, registry, base_ref, base_dir, tokenizer, data, metrics,
                           published_state, details)  # fmt: skip
        shutil.rmtree(checkpoint_root, ignore_errors=True)
    dist.barrier()
    return outcome


def _objectives(
    plan: TrainPlan, backend: Backend, dist: Dist, tokenizer: Any, data: PreparedData, ctx: JobContext
) -> tuple[Objective, Objective | None]:
    pad_id = tokenizer.pad_token_id
    if not plan.is_preference:
        train = SftObjective(data.train, pad_id)  # type: ignore[arg-type]
        return train, (SftObjective(data.eval, pad_id) if data.eval else None)  # type: ignore[arg-type]
    pairs: list[PairSample] = [*data.train, *data.eval]  # type: ignore[list-item]
    reference = _reference(plan, backend, dist, pairs, pad_id, ctx)
    n = len(data.train)
    train = DpoObjective(pairs[:n], reference[:n], plan.dpo_beta, pad_id)
    evaluation = DpoObjective(pairs[n:], reference[n:], plan.dpo_beta, pad_id) if data.eval else None
    return train, evaluation


def _reference(
    plan: TrainPlan, backend: Backend, dist: Dist, pairs: list[PairSample], pad_id: int, ctx: JobContext
) -> torch.Tensor:
    """Reference log-probs: the separate reference model if given, else the policy before any update
    (its adapter switched off, for LoRA)."""
    logger.info("computing reference log-probabilities for %d pairs", len(pairs))
    backend.train(False)
    if plan.dpo_reference:
        registry = _registry(ctx.settings)
        try:
            cache_dir = Path(ctx.settings["cache_dir"]) if ctx.settings.get("cache_dir") else None
            reference_dir = registry.materialize(registry.resolve(plan.dpo_reference).ref, cache_dir)
        finally:
            registry.close()
        from transformers import AutoModelForCausalLM

        reference_model = AutoModelForCausalLM.from_pretrained(
            reference_dir, dtype=publish.base_dtype(reference_dir)
        ).to(dist.device)
        reference_model.eval()
        values = reference_logprobs(reference_model, dist.device, pairs, plan.micro_batch_size, dist, pad_id)
        del reference_model
    elif plan.adapter is not None:
        with backend.module.disable_adapter():
            values = reference_logprobs(
                backend.forward, dist.device, pairs, plan.micro_batch_size, dist, pad_id
            )
    else:
        values = reference_logprobs(backend.forward, dist.device, pairs, plan.micro_batch_size, dist, pad_id)
    backend.train(True)
    return values


def _publish(
    ctx: JobContext,
    plan: TrainPlan,
    backend: Backend,
    registry: Any,
    base_ref: str,
    base_dir: Path,
    tokenizer: Any,
    data: PreparedData,
    metrics: dict[str, float],
    state: dict[str, Any] | None,
    details: dict[str, Any],
) -> JobResult:
    out = ctx.work_dir / "output"
    shutil.rmtree(out, ignore_errors=True)
    if plan.adapter is not None:
        directory = publish.save_adapter(backend.module, tokenizer, out / "adapter", base_ref, state)
    else:
        directory = publish.save_model(
            backend.module, tokenizer, out / "model", publish.base_dtype(base_dir), state
        )
    merged_directory = None
    if plan.merge_lora:
        merged_directory = publish.merge_adapter(base_dir, directory, tokenizer, out / "merged")
    recipe = {
        "trainer": "cairn",
        "job_id": ctx.job_id,
        "method": plan.method.value,
        "base_model": base_ref,
        "dataset": {"uri": plan.dataset.uri, "format": data.format.value, "eval_uri": plan.dataset.eval_uri},
        "dataset_sha256": data.sha256,
        "eval_dataset_sha256": data.eval_sha256,
        "spec": ctx.spec,
        **metrics,
    }
    labels = {**plan.labels, "cairn.dev/job-id": ctx.job_id}
    published = publish.push(
        registry, plan, directory=directory, merged_directory=merged_directory, base_ref=base_ref,
        recipe=recipe, labels=labels,
    )  # fmt: skip
    if published.merged is not None:
        details["merged"] = published.merged.ref
    return JobResult(published.version.model, published.version.number, metrics, details)
