"""A runner killed mid-job while its service is down: the restarted service resumes it from the checkpoint.

The job trains with DeepSpeed ZeRO-2, so the resumed attempt restores a real
DeepSpeed checkpoint (weights and optimizer state) in a new process.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from trainer_harness import FINISHED, TrainerFactory, job_spec, processes_mentioning, wait_for_state

from cairn.jobs.store import JobStore
from cairn.services.registry.client import RegistryClient
from cairn.services.trainer.client import TrainerClient
from cairn.v1 import common_pb2


def test_killed_runner_and_restarted_service_resume_from_the_last_checkpoint(
    trainer_factory: TrainerFactory, registry: RegistryClient, tiny_ref: str, data_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "trainer"
    first = trainer_factory(root)
    args = {"learning_rate": 1e-2, "max_steps": 40, "save_steps": 5, "save_total_limit": 2, "zero_stage": 2}
    spec = job_spec(tiny_ref, data_dir / "chat.jsonl", "lora", "svc-resumed", args=args)
    with TrainerClient(first.address) as client:
        job = client.submit(spec)
        deadline = time.monotonic() + 300
        while client.get(job.id).status.checkpoint_step < 5:
            assert client.get(job.id).status.state not in FINISHED and time.monotonic() < deadline
            time.sleep(0.02)
        pids = processes_mentioning(job.id)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        frozen = client.get(job.id).status
    first.stop()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    while processes_mentioning(job.id):
        time.sleep(0.02)
    assert frozen.state == common_pb2.JOB_STATE_RUNNING and frozen.progress.step < 40

    second = trainer_factory(root)
    with TrainerClient(second.address) as client:
        done = wait_for_state(client, job.id, *FINISHED)
    assert done.status.state == common_pb2.JOB_STATE_SUCCEEDED, done.status.error
    assert done.status.attempts == 2 and done.status.result.model == "svc-resumed"
    # The first loss comes from attempt 1, through the checkpoint.
    recipe = registry.show(f"{done.status.result.model}@{done.status.result.version}").root.recipe
    assert recipe["first_train_loss"] > 7 and done.final_train_loss < 0.5 * recipe["first_train_loss"]

    step = frozen.checkpoint_step
    store = JobStore(f"sqlite:///{root / 'jobs.db'}")
    try:
        lines = [line.line for line in store.logs(job.id)]
    finally:
        store.close()
    assert any(line.startswith("attempt 1 ended without finishing the job: ") for line in lines)
    assert f"attempt 2 started on the local runner from the checkpoint at step {step}" in lines
    assert f"INFO cairn.trainer: resumed from the checkpoint at step {step} of 40" in lines
    second.stop()
