"""The quantizer's job entry point (`cairn.services.quantizer.work:run`), executed by a runner.

Resolve the source (a registry reference, pinned to its version, or a
directory), quantize and evaluate it into the job's work dir, and publish the
artifact to the registry as format "compressed-tensors" with its lineage:
the pinned source as parent, and a recipe naming the method, its parameters,
the calibration data's digest and the evaluation report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from cairn.jobs.context import JobContext
from cairn.jobs.records import JobResult, Progress

from .convert import spec_from_dict
from .export import RECIPE_FILE
from .plan import QuantPlan, is_directory, plan_from_spec
from .quantize import Outcome, quantize

logger = logging.getLogger("cairn.quantizer")

ARTIFACT_FORMAT = "compressed-tensors"


def resolve_device(name: str) -> torch.device:
    """ "auto": the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(ctx: JobContext) -> JobResult:
    from cairn.jobs.datasets import fetch
    from cairn.services.registry.client import RegistryClient

    plan = plan_from_spec(spec_from_dict(ctx.spec))
    settings = ctx.settings
    cache_dir = Path(settings["cache_dir"]) if settings.get("cache_dir") else None
    device = resolve_device(settings.get("device", "auto"))
    with RegistryClient(settings.get("registry") or None) as registry:
        if is_directory(plan.source):
            source_dir, source_ref = Path(plan.source).expanduser(), ""
        else:
            source_ref = registry.resolve(plan.source).ref
            logger.info("source %s resolves to %s", plan.source, source_ref)
            source_dir = registry.materialize(source_ref, cache_dir)

        def report(step: int, total: int, message: str) -> None:
            ctx.report(Progress(step=step, total_steps=total, message=message))
            ctx.log(message)

        lineage = {"quantizer": "cairn", "job_id": ctx.job_id, "source": source_ref or str(source_dir)}
        outcome = quantize(
            plan,
            source_dir,
            ctx.work_dir / "output",
            fetch=lambda uri: fetch(uri, ctx.work_dir / "data", registry, cache_dir),
            device=device,
            report=report,
            lineage=lineage,
        )
        return publish(registry, plan, outcome, source_ref, ctx.job_id)


def publish(registry: Any, plan: QuantPlan, outcome: Outcome, source_ref: str, job_id: str) -> JobResult:
    """Push the artifact with its lineage; the job's result (version, evaluation, data digests)."""
    recipe = json.loads((outcome.directory / RECIPE_FILE).read_text())
    version = registry.push_dir(
        outcome.directory,
        plan.output_name,
        format=ARTIFACT_FORMAT,
        parents=[source_ref] if source_ref else [],
        recipe=recipe,
        aliases=plan.aliases,
        labels={"cairn.dev/method": plan.method.value, **({"cairn.dev/job-id": job_id} if job_id else {})},
        description=f"{plan.scheme} of {source_ref or plan.source}",
    )
    logger.info("published %s (%s)", version.ref, ARTIFACT_FORMAT)
    details = {
        "source": source_ref or plan.source,
        "calibration_sha256": outcome.calibration_sha256,
        "eval_sha256": outcome.eval_sha256,
        "calibration_samples": outcome.calibration_samples,
    }
    return JobResult(version.model, version.number, outcome.evaluation.metrics(), details)
