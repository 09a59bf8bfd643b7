"""`cairn train ...` and `cairn trainer serve` against the session's trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loopback import ServiceThread

from cairn.cli import main


def test_submit_watch_ls_show_cancel(
    trainer_service: ServiceThread,
    tiny_ref: str,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address = ["--trainer", trainer_service.address]
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        f"base_model: {tiny_ref}\n"
        "method: lora\n"
        f"dataset: {{uri: {data_dir / 'chat.jsonl'}, eval_split: 0.25}}\n"
        "args: {max_steps: 4, logging_steps: 1, learning_rate: 1e-3}\n"
        "lora: {r: 4, target_modules: [q_proj, v_proj]}\n"
        "output: {name: cli-lora}\n"
    )
    assert main(["train", "submit", str(job_file), "--watch", *address]) == 0
    out = capsys.readouterr()
    job_id = out.out.split()[1]
    assert out.out.startswith(f"submitted {job_id} (queued, output cli-lora)")
    assert f"{job_id} succeeded: published cli-lora@1" in out.out
    assert "4/4" in out.err  # the progress bar

    assert main(["train", "ls", "--state", "succeeded", *address]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(job_id))
    assert "succeeded" in line and "lora" in line and "4/4" in line

    assert main(["train", "show", job_id, *address]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == job_id and shown["spec"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert shown["status"]["state"] == "JOB_STATE_SUCCEEDED"

    assert main(["train", "watch", job_id, "--logs", *address]) == 0
    assert capsys.readouterr().out.strip().endswith("succeeded: published cli-lora@1")

    assert main(["train", "cancel", job_id, *address]) == 1
    assert "cairn train cancel: job" in capsys.readouterr().err

    job_file.write_text("method: lora\nargs: {lerning_rate: 1}\n")
    assert main(["train", "submit", str(job_file), *address]) == 1
    assert "unknown key 'args.lerning_rate'" in capsys.readouterr().err


def test_cli_reports_an_unreachable_trainer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "ls", "--trainer", "127.0.0.1:1"]) == 1
    assert "is `cairn trainer serve` running there?" in capsys.readouterr().err


def test_serve_refuses_a_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["trainer", "serve", "--jobs.max-concurrent", "0"])
    assert exited.value.code == 2
    assert "jobs.max_concurrent" in capsys.readouterr().err
