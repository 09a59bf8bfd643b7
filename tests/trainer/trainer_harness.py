"""Services on loopback for the trainer suite: each on its own event loop thread, ephemeral port."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopback import ServiceThread

from cairn.services.trainer.jobfile import spec_from_yaml
from cairn.v1 import common_pb2, trainer_pb2

# A memorization set: short, fixed answers the tiny model can learn in a few dozen steps.
CHATS = [
    ("What is the capital of France?", "Paris is the capital."),
    ("Name a red fruit.", "A strawberry is red."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("What color is the sky?", "The sky is blue today."),
]
DOCUMENTS = [
    "The river runs north past the old mill and the stone bridge.",
    "Seven green lamps hang above the quiet market street at night.",
]
PREFERENCES = [
    ("What is the capital of France?", "Paris is the capital.", "London is the capital."),
    ("Name a red fruit.", "A strawberry is red.", "A banana is red."),
]


TrainerFactory = Callable[..., ServiceThread]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def chat_records() -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in CHATS
    ]


def preference_records() -> list[dict[str, Any]]:
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PREFERENCES]


def text_records() -> list[dict[str, Any]]:
    return [{"text": t} for t in DOCUMENTS]


def wait_for_state(client: Any, job_id: str, *states: int, timeout: float = 300.0) -> trainer_pb2.TrainJob:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(job_id)
        if job.status.state in states:
            return job
        if time.monotonic() > deadline:
            name = common_pb2.JobState.Name(job.status.state)
            raise AssertionError(f"job {job_id} is still {name} after {timeout}s: {job.status.error}")
        time.sleep(0.05)


ARGS = {"micro_batch_size": 2, "logging_steps": 5, "lr_scheduler": "constant"}


def job_spec(tiny_ref: str, data: Path, method: str, name: str, **fields: Any) -> trainer_pb2.TrainJobSpec:
    """A job on `data` (also its eval set) with small-batch defaults, fields as in the YAML job file."""
    spec = {
        "base_model": tiny_ref,
        "method": method,
        "dataset": {"uri": str(data), "eval_uri": str(data)},
        "output": {"name": name},
        **fields,
    }
    spec["args"] = {**ARGS, **fields.get("args", {})}
    return spec_from_yaml(spec)


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (job processes carry their job id)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


FINISHED = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)
