"""The quantizer as a job service: submit, watch with progress, cancel, list; results in the registry
with lineage and the evaluation report; bad specs refused before a job exists, bad models failing the job."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from quant_harness import make_runner, spec

from cairn.common.errors import FailedPrecondition, InvalidArgument, NotFound
from cairn.v1 import common_pb2


def _events(quantizer: Any, job_id: str) -> list[common_pb2.JobEvent]:
    return list(quantizer.watch(job_id, include_logs=True))


def _state(event_or_job: Any) -> int:
    return event_or_job.status.state


@pytest.fixture(scope="module")
def gptq_events(submitted: dict[str, Any]) -> list[common_pb2.JobEvent]:
    return submitted["events"]["gptq"]()


def test_job_runs_reports_progress_and_succeeds(gptq_events, submitted) -> None:
    job = submitted["gptq"]
    assert job.id.startswith("quant-") and _state(job) == common_pb2.JOB_STATE_QUEUED
    assert job.spec.output_name == "acme/tiny-gptq"
    states = [e.status.state for e in gptq_events if not e.log]
    assert states[-1] == common_pb2.JOB_STATE_SUCCEEDED, gptq_events[-1].status.error
    assert common_pb2.JOB_STATE_RUNNING in states
    # Status events are snapshots read by the manager's poll loop, so two reports inside one poll
    # interval show up as the later one; progress only has to move forward. Every progress message
    # is also a log line, and the log is delivered whole.
    steps = [e.status.progress.step for e in gptq_events if not e.log]
    assert steps == sorted(steps)
    final = gptq_events[-1].status
    assert final.progress.step == final.progress.total_steps == 5  # 2 layers + artifact + 2 evaluations
    assert final.result.model == "acme/tiny-gptq" and final.result.version == 1
    logs = "\n".join(e.log for e in gptq_events if e.log)
    expected = ["quantizing layer 1/2", "quantizing layer 2/2", "writing the compressed-tensors artifact"]
    assert [message for message in expected if message not in logs] == []


def test_report_and_lineage_in_the_registry(
    gptq_events, quantizer, registry, submitted, calibration_file
) -> None:
    report = quantizer.get(submitted["gptq"].id).report
    assert report.eval_tokens == 4 * 63 and report.perplexity_before > 1 and report.perplexity_after > 1
    assert abs(report.perplexity_after / report.perplexity_before - 1) < 0.05
    assert 0 < report.size_bytes_after < report.size_bytes_before
    version = registry.resolve("acme/tiny-gptq@candidate")
    assert version.format == "compressed-tensors"
    assert [str(p) for p in version.parents] == ["tiny@1"]
    assert version.labels["cairn.dev/job-id"] == submitted["gptq"].id
    recipe = version.recipe
    assert (
        recipe["method"] == "gptq"
        and recipe["source"] == "tiny@1"
        and recipe["job_id"] == submitted["gptq"].id
    )
    assert recipe["parameters"]["act_order"] is True and recipe["parameters"]["kv_cache"]["dtype"] == "int8"
    assert recipe["calibration"]["sha256"] == hashlib.sha256(calibration_file.read_bytes()).hexdigest()
    assert recipe["evaluation"]["perplexity_after"] == pytest.approx(report.perplexity_after)


def test_published_artifact_serves(gptq_events, registry, tmp_path: Path) -> None:
    directory = registry.materialize("acme/tiny-gptq@1", tmp_path / "cache")
    runner = make_runner(directory)
    assert runner.quantization.name == "w4a16" and runner.kv_quant is not None and not runner.kv_quant.dynamic
    from quant_harness import prompts, teacher_forced_logits

    vocab = json.loads((directory / "config.json").read_text())["vocab_size"]
    assert torch.isfinite(teacher_forced_logits(runner, prompts(vocab, count=1, length=6), 3)).all()


def test_a_model_the_spec_does_not_fit_fails_the_job_with_the_reason(submitted) -> None:
    final = submitted["events"]["bad"]()[-1].status
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert "group_size 48 does not divide hidden_size" in final.error


@pytest.mark.parametrize(
    ("quant_type", "fields", "error", "message"),
    [
        ("awq", {}, InvalidArgument, "awq needs calibration data"),
        ("unspecified", {}, InvalidArgument, "quant_type is required"),
        ("fp8", {"group_size": 128}, InvalidArgument, "per-channel weight scales"),
        ("fp8", {"runner": common_pb2.RUNNER_KIND_RAY}, FailedPrecondition, "runner 'ray' is not configured"),
    ],
)
def test_bad_submissions_are_refused(quantizer, quant_type, fields, error, message) -> None:
    before = len(list(quantizer.list()))
    with pytest.raises(error, match=message):
        quantizer.submit(spec("tiny@base", quant_type, **fields))
    assert len(list(quantizer.list())) == before


def test_cancel_a_running_job(quantizer) -> None:
    job = quantizer.submit(spec("tiny@base", "fp8"))
    deadline = time.monotonic() + 60
    while _state(quantizer.get(job.id)) == common_pb2.JOB_STATE_QUEUED:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    cancelled = quantizer.cancel(job.id)
    assert _state(cancelled) == common_pb2.JOB_STATE_CANCELLED
    assert _events(quantizer, job.id)[-1].status.state == common_pb2.JOB_STATE_CANCELLED
    with pytest.raises(FailedPrecondition):
        quantizer.cancel(job.id)


def test_list_and_unknown_jobs(quantizer, submitted, gptq_events) -> None:
    succeeded = list(quantizer.list([common_pb2.JOB_STATE_SUCCEEDED]))
    assert submitted["gptq"].id in [j.id for j in succeeded]
    assert all(_state(j) == common_pb2.JOB_STATE_SUCCEEDED for j in succeeded)
    everything = [j.id for j in quantizer.list(page_size=1)]
    assert everything.index(submitted["bad"].id) < everything.index(submitted["gptq"].id)  # newest first
    with pytest.raises(NotFound):
        quantizer.get("quant-nope")
    with pytest.raises(InvalidArgument, match="states: 99 is not a JobState"):
        list(quantizer.list([99]))
