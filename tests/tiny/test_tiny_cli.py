"""`cairn models build-tiny` builds the same directory as the Python API."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from cairn.cli import main
from cairn.tiny.cli import register


def _digests(model_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model_dir.iterdir())}


def test_cli_in_a_fresh_process_builds_the_fixture_byte_for_byte(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # A separate process also proves tokenizer training does not depend on
    # per-process hash seeds.
    out = tmp_path / "tiny"
    result = subprocess.run(
        [sys.executable, "-m", "cairn.cli", "models", "build-tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert _digests(out) == _digests(tiny_model_dir)


def test_cli_options_reach_the_builder(tmp_path: Path, tiny_model_factory, capsys) -> None:
    out = tmp_path / "qwen"
    argv = [
        "models",
        "build-tiny",
        "--out",
        str(out),
        "--arch",
        "qwen2",
        "--vocab-size",
        "1024",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert _digests(out) == _digests(tiny_model_factory("qwen2", vocab_size=1024, seed=3))


def test_cli_reports_bad_input_without_a_traceback(tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["models", "build-tiny", "--out", str(tmp_path / "taken")]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["models", "build-tiny", "--out", str(tmp_path / "new"), "--num-kv-heads", "3"]) == 2
    assert "not a multiple" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["models", "build-tiny", "--out", str(tmp_path / "new"), "--arch", "gpt2"])


def test_joins_a_models_group_registered_by_another_package() -> None:
    parser = argparse.ArgumentParser(prog="cairn")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models").add_subparsers(dest="models_command", required=True)
    models.add_parser("list").set_defaults(func="list")
    register(sub)
    assert parser.parse_args(["models", "list"]).func == "list"
    args = parser.parse_args(["models", "build-tiny", "--out", "x", "--arch", "mistral"])
    assert (args.out, args.arch) == (Path("x"), "mistral")
