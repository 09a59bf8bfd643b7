"""`cairn registry push/ls/pull/alias/show/rm` through `cairn.cli.main`, against the loopback server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from registry_content import tree
from registry_harness import RegistryServer, free_port

from cairn.cli import main


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], address: str) -> None:
        self.capsys = capsys
        self.address = address

    def __call__(self, *args: str, expect: int = 0) -> str:
        code = main(["registry", *args, "--registry", self.address])
        out, err = self.capsys.readouterr()
        assert code == expect, f"exit {code}: {out}{err}"
        return out if expect == 0 else err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], registry_server: RegistryServer) -> Cli:
    return Cli(capsys, registry_server.address)


def test_cli_round_trip(cli: Cli, prefix: str, small_dir: Path, tmp_path: Path) -> None:
    base, tuned = f"{prefix}/base", f"{prefix}/tuned"
    out = cli("push", str(small_dir), "--name", base, "--alias", "production", "--label", "family=llama")
    assert out.startswith(f"pushed {base}@1 (3 files") and "aliases: production" in out

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"method": "lora", "dataset": "sha256:abc", "epochs": 2}))
    out = cli(
        "push", str(small_dir), "--name", tuned, "--parent", f"{base}@production",
        "--format", "peft-adapter", "--recipe", f"@{recipe}", "--description", "first tune",
    )  # fmt: skip
    assert out.startswith(f"pushed {tuned}@1")

    listing = cli("ls", "--prefix", prefix)
    assert [line.split()[0] for line in listing.splitlines()] == ["NAME", tuned, base]
    assert "production=1" in listing
    versions = cli("ls", tuned)
    assert versions.splitlines()[1].split()[:3] == ["1", "ready", "peft-adapter"]
    assert f"{base}@1" in versions

    assert cli("alias", base, "staging", "1").strip() == f"{base}@staging -> {base}@1"
    shown = cli("show", f"{base}@staging")
    assert shown.splitlines()[0] == f"{base}@1  [ready]  format hf-model"
    assert "aliases    production, staging" in shown
    assert "label      family=llama" in shown
    assert f"descendant {tuned}@1 (peft-adapter) <- {base}@1" in shown
    assert "model.safetensors" in shown

    shown_json = json.loads(cli("show", tuned, "--json"))
    assert shown_json["root"]["recipe"] == {"method": "lora", "dataset": "sha256:abc", "epochs": 2}
    assert [a["model"] for a in shown_json["ancestors"]] == [base]
    assert shown_json["root"]["state"] == "ready"

    out = cli("pull", f"{base}@production", str(tmp_path / "pulled"))
    assert out.startswith(f"pulled {base}@1")
    assert tree(tmp_path / "pulled") == tree(small_dir)

    err = cli("rm", f"{base}@1", expect=1)
    assert "still the target of alias(es) production, staging" in err
    assert cli("alias", base, "production", "--delete").startswith(f"deleted alias {base}@production")
    cli("alias", base, "staging", "--delete")
    assert cli("rm", f"{base}@1").strip() == f"deleted {base}@1"
    assert cli("ls", base).splitlines() == ["VERSION  STATE  FORMAT  SIZE  ALIASES  CREATED  PARENTS"]
    assert "deleted" in cli("ls", base, "--deleted")
    lines = cli("ls", base, "--deleted", "--json").splitlines()
    assert [json.loads(line)["state"] for line in lines] == ["deleted"]


def test_cli_reports_errors_without_tracebacks(cli: Cli, name: str, tmp_path: Path) -> None:
    assert "not found" in cli("show", name, expect=1)
    assert "a reference is" in cli("pull", "bad@@ref", str(tmp_path), expect=1)
    assert "must be KEY=VALUE" in cli("push", str(tmp_path), "--name", name, "--label", "novalue", expect=1)
    assert "is not JSON" in cli("push", str(tmp_path), "--name", name, "--recipe", "{nope", expect=1)
    assert "no files to push" in cli("push", str(tmp_path), "--name", name, expect=1)
    assert "give the VERSION" in cli("alias", name, "production", expect=1)


def test_cli_explains_an_unreachable_registry(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAIRN_REGISTRY", f"127.0.0.1:{free_port()}")
    assert main(["registry", "ls"]) == 1
    err = capsys.readouterr().err
    assert "unavailable" in err and "cairn registry serve" in err
