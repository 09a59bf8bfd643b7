"""Every method through the real service: gRPC submit, a child process trains, the registry receives.

The jobs of this module are submitted together (the trainer runs two at a
time) and the tests then inspect their outcomes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from loopback import ServiceThread
from trainer_harness import FINISHED, job_spec, processes_mentioning, wait_for_state

from cairn.common.errors import FailedPrecondition, InvalidArgument, NotFound
from cairn.services.registry.client import RegistryClient
from cairn.services.trainer.client import TrainerClient
from cairn.services.trainer.data.encode import Encoder
from cairn.services.trainer.data.reader import read_examples
from cairn.services.trainer.modeling import load_tokenizer
from cairn.services.trainer.plan import DatasetFormat
from cairn.v1 import common_pb2, trainer_pb2

SUCCEEDED = common_pb2.JOB_STATE_SUCCEEDED


@pytest.fixture(scope="module")
def jobs(trainer: TrainerClient, tiny_ref: str, data_dir: Path) -> Iterator[dict[str, Any]]:
    chat, pairs, text = data_dir / "chat.jsonl", data_dir / "pairs.jsonl", data_dir / "text.jsonl"

    def spec(
        data: Path, method: str, name: str, lr: float, steps: int, **fields: Any
    ) -> trainer_pb2.TrainJobSpec:
        args = {"learning_rate": lr, "max_steps": steps, **fields.pop("args", {})}
        return job_spec(tiny_ref, data, method, name, args=args, **fields)

    merge = {"name": "svc-lora", "merge_lora": True, "aliases": ["candidate"]}
    reference = {"beta": 0.2, "reference_model": "tiny@base"}
    ranks = {"micro_batch_size": 1, "zero_stage": 2, "num_workers": 2}
    specs = {
        "lora": spec(
            chat, "lora", "svc-lora", 1e-2, 30, args={"eval_steps": 10}, output=merge, labels={"team": "nlp"}
        ),
        "sft": spec(chat, "sft", "svc-sft", 1e-3, 30, args={"zero_stage": 3}),
        "prefix-tuning": spec(chat, "prefix-tuning", "svc-prefix", 1e-1, 60),
        "dpo": spec(pairs, "dpo", "svc-dpo", 1e-3, 20),
        "dpo-lora": spec(pairs, "dpo", "svc-dpo-lora", 1e-2, 20, lora={"r": 8}, dpo=reference),
        "pretrain": spec(text, "pretrain", "svc-pretrain", 1e-3, 30, args={"packing": True}),
        "zero2-ranks": spec(chat, "lora", "svc-zero2", 1e-2, 30, args=ranks),
        "broken": spec(data_dir / "broken.jsonl", "lora", "svc-broken", 1e-2, 30),
    }
    submitted = {name: trainer.submit(spec) for name, spec in specs.items()}
    events: list[common_pb2.JobEvent] = []
    watcher = threading.Thread(
        target=lambda: events.extend(trainer.watch(submitted["lora"].id, include_logs=True)), daemon=True
    )
    watcher.start()
    done = {name: wait_for_state(trainer, job.id, *FINISHED) for name, job in submitted.items()}
    watcher.join(60)
    yield {"submitted": submitted, "done": done, "events": events}


def _loss(model: Any, tokenizer: Any, data: Path) -> float:
    """Mean next-token loss over the labelled tokens, computed by transformers itself."""
    _, examples = read_examples(data, DatasetFormat.AUTO)
    encoder = Encoder(tokenizer, 2048)
    total = count = 0.0
    with torch.no_grad():
        for example in examples:
            sample = encoder.conversation(example)  # type: ignore[arg-type]
            labels = torch.tensor([sample.labels])
            n = int((labels[:, 1:] != -100).sum())
            loss = model(input_ids=torch.tensor([sample.input_ids]), labels=labels).loss
            total += float(loss) * n
            count += n
    return total / count


@pytest.mark.parametrize("method", ["sft", "lora", "prefix-tuning", "dpo", "dpo-lora", "pretrain"])
def test_methods_halve_the_training_loss(
    jobs: dict[str, Any], registry: RegistryClient, tiny_ref: str, method: str
) -> None:
    job = jobs["done"][method]
    assert job.status.state == SUCCEEDED, job.status.error
    version = registry.show(f"{job.status.result.model}@{job.status.result.version}").root
    recipe = version.recipe
    assert job.final_train_loss <= 0.5 * recipe["first_train_loss"], (job.final_train_loss, recipe)
    assert job.HasField("final_eval_loss") and recipe["final_eval_loss"] == pytest.approx(job.final_eval_loss)
    assert version.parents[0].model == "tiny" and f"{version.parents[0]}" == tiny_ref
    assert recipe["job_id"] == job.id and recipe["base_model"] == tiny_ref
    assert (
        recipe["spec"]["method"] == trainer_pb2.TrainMethod.Name(job.spec.method)
        and recipe["trainer"] == "cairn"
    )
    dataset = Path(job.spec.dataset.uri)
    assert recipe["dataset_sha256"] == hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert version.format == (
        "peft-adapter" if method in ("lora", "prefix-tuning", "dpo-lora") else "hf-model"
    )
    assert version.labels["cairn.dev/job-id"] == job.id
    assert job.status.progress.step == job.status.progress.total_steps == recipe["spec"]["args"]["max_steps"]


def test_published_lora_reproduces_the_eval_loss_and_merges_exactly(
    jobs: dict[str, Any], registry: RegistryClient, tiny_ref: str, data_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    job = jobs["done"]["lora"]
    assert job.status.state == SUCCEEDED, job.status.error
    adapter_ref = f"{job.status.result.model}@{job.status.result.version}"
    adapter = registry.show(adapter_ref).root
    assert "candidate" in adapter.aliases and adapter.labels["team"] == "nlp"
    adapter_dir = registry.materialize(adapter_ref, tmp_path)
    base_dir = registry.materialize(tiny_ref, tmp_path)
    tokenizer = load_tokenizer(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    assert _loss(model, tokenizer, data_dir / "chat.jsonl") == pytest.approx(job.final_eval_loss, rel=1e-4)

    merged = registry.show("svc-lora-merged@candidate").root
    assert [str(p) for p in merged.parents] == [tiny_ref, adapter_ref]
    merged_model = AutoModelForCausalLM.from_pretrained(registry.materialize(merged.ref, tmp_path)).eval()
    ids = torch.tensor([tokenizer("The sky is blue today.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged_model(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-5)


def test_published_zero3_model_reproduces_the_eval_loss(
    jobs: dict[str, Any], registry: RegistryClient, data_dir: Path, tmp_path: Path
) -> None:
    """The full-SFT job ran under ZeRO-3: its weights were gathered from the shards before saving."""
    from transformers import AutoModelForCausalLM

    job = jobs["done"]["sft"]
    model_dir = registry.materialize(f"{job.status.result.model}@{job.status.result.version}", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    loss = _loss(model, load_tokenizer(model_dir), data_dir / "chat.jsonl")
    assert loss == pytest.approx(job.final_eval_loss, rel=1e-4)


def test_two_zero2_ranks_train_like_one_process_with_their_joint_batch(jobs: dict[str, Any]) -> None:
    ranks, single = jobs["done"]["zero2-ranks"], jobs["done"]["lora"]
    assert ranks.status.state == SUCCEEDED, ranks.status.error
    assert ranks.final_train_loss == pytest.approx(single.final_train_loss, rel=1e-3)
    assert ranks.final_eval_loss == pytest.approx(single.final_eval_loss, rel=1e-3)


def test_a_malformed_line_fails_the_job_with_its_number(jobs: dict[str, Any]) -> None:
    job = jobs["done"]["broken"]
    assert job.status.state == common_pb2.JOB_STATE_FAILED
    assert job.status.error.startswith("broken.jsonl line 3: not valid JSON")
    assert job.status.attempts == 1


def test_watch_streams_status_first_then_progress_then_logs(jobs: dict[str, Any]) -> None:
    events = jobs["events"]
    statuses = [e.status for e in events if not e.log]
    assert statuses[0].state in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING)
    assert statuses[-1].state == SUCCEEDED and statuses[-1].result.model == "svc-lora"
    steps = [s.progress.step for s in statuses]
    # Watch merges changes that land between two polls, so which intermediate steps
    # appear depends on timing; order, the end and the eval rule do not.
    assert steps == sorted(steps) and steps[-1] == 30
    # eval_steps=10: reports from step 10 on carry an evaluation loss, earlier ones none.
    assert statuses[-1].progress.HasField("eval_loss")
    assert all(
        s.progress.HasField("eval_loss") == (s.progress.step >= 10) for s in statuses if s.progress.step
    )
    logs = [e.log for e in events if e.log]
    assert any(line.startswith("INFO cairn.trainer: step 30/30 loss") for line in logs), logs
    assert any("published svc-lora@1" in line for line in logs)
    assert all(e.job_id == jobs["submitted"]["lora"].id for e in events)


def test_list_and_get(jobs: dict[str, Any], trainer: TrainerClient) -> None:
    ids = [job.id for job in jobs["submitted"].values()]
    listed = [job.id for job in trainer.list(page_size=2) if job.id in ids]
    assert listed == ids[::-1]
    failed = [job.id for job in trainer.list([common_pb2.JOB_STATE_FAILED]) if job.id in ids]
    assert failed == [jobs["submitted"]["broken"].id]
    got = trainer.get(ids[0])
    assert got.spec == jobs["submitted"]["lora"].spec and got.status.runner == common_pb2.RUNNER_KIND_LOCAL
    with pytest.raises(NotFound, match="not found"):
        trainer.get("train-000000000000")
    with pytest.raises(NotFound, match="not found"):
        list(trainer.watch("train-000000000000"))
    with pytest.raises(FailedPrecondition, match="has finished"):
        trainer.cancel(ids[0])
    with pytest.raises(FailedPrecondition, match="SUCCEEDED; it cannot become QUEUED"):
        trainer.resume(ids[0])


def test_cancel_stops_a_running_job(
    trainer: TrainerClient, tiny_ref: str, data_dir: Path, jobs: object
) -> None:
    args = {"max_steps": 1_000_000, "logging_steps": 1}
    spec = job_spec(tiny_ref, data_dir / "chat.jsonl", "lora", "svc-cancel", args=args)
    job = trainer.submit(spec)
    for event in trainer.watch(job.id):
        if event.status.progress.step >= 2:
            break
    assert processes_mentioning(job.id)
    cancelled = trainer.cancel(job.id)
    assert cancelled.status.state == common_pb2.JOB_STATE_CANCELLED
    assert not processes_mentioning(job.id)
    assert trainer.get(job.id).status.state == common_pb2.JOB_STATE_CANCELLED


def test_bad_submissions_are_refused_before_a_job_exists(
    trainer: TrainerClient, trainer_service: ServiceThread, tiny_ref: str, data_dir: Path
) -> None:
    chat = data_dir / "chat.jsonl"
    with pytest.raises(InvalidArgument, match="base_model: required"):
        trainer.submit(trainer_pb2.TrainJobSpec(method=trainer_pb2.TRAIN_METHOD_LORA))
    with pytest.raises(InvalidArgument, match="prefix tuning cannot pack"):
        trainer.submit(job_spec(tiny_ref, chat, "prefix-tuning", "x", args={"packing": True}))
    with pytest.raises(FailedPrecondition, match="runner 'kubernetes' is not configured"):
        trainer.submit(job_spec(tiny_ref, chat, "lora", "x", runner="kubernetes"))
    if not (torch.cuda.is_available() and _has_bitsandbytes()):
        with pytest.raises(FailedPrecondition, match="method qlora needs"):
            trainer.submit(job_spec(tiny_ref, chat, "qlora", "x"))


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.findjob_spec("bitsandbytes") is not None


def test_runner_processes_are_gone(jobs: dict[str, Any]) -> None:
    assert all(not processes_mentioning(job.id) for job in jobs["submitted"].values())
    assert os.environ.get("CAIRN_JOBS_DB_URL") is None
