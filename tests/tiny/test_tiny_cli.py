"""`cairn models build-tiny` builds the same directory as the Python API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.cli import main
from cairn.common.server import start_server
from cairn.services.registry.client import RegistryClient
from cairn.services.registry.config import RegistryConfig
from cairn.services.registry.server import registry_services
from cairn.tiny.cli import register


def _digests(model_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model_dir.iterdir())}


@pytest.fixture
def registry_address(tmp_path: Path) -> Iterator[str]:
    """A real registry (SQLite + local blobs under tmp_path) served on loopback from a thread."""
    config = RegistryConfig(root=tmp_path / "registry", port=0, log_format="text")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def start() -> int:
        services = await stack.enter_async_context(registry_services(config))
        running = await start_server(config, services)
        stack.push_async_callback(running.stop, None)
        return running.port

    port = asyncio.run_coroutine_threadsafe(start(), loop).result()
    yield f"127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


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
    assert main(["models", "build-tiny", "--out", str(tmp_path / "taken")]) == 1
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["models", "build-tiny", "--out", str(tmp_path / "new"), "--num-kv-heads", "3"]) == 1
    assert "not a multiple" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["models", "build-tiny", "--out", str(tmp_path / "new"), "--arch", "gpt2"])


def test_push_publishes_the_build_to_the_registry(
    tmp_path: Path, registry_address: str, tiny_model_dir: Path, capsys
) -> None:
    out = tmp_path / "tiny"
    argv = ["models", "build-tiny", "--out", str(out), "--push", "--registry", registry_address]
    assert main([*argv, "--alias", "production"]) == 0
    assert capsys.readouterr().out.split() == [str(out), "tiny-llama@1"]

    with RegistryClient(registry_address) as client:
        version = client.resolve("tiny-llama@production")
        assert version.number == 1
        assert version.recipe["builder"] == "cairn.tiny"
        assert version.recipe["architecture"] == "llama" and version.recipe["seed"] == 0
        assert {a.path: a.sha256 for a in version.artifacts} == _digests(tiny_model_dir)
        pulled = client.materialize("tiny-llama@production", tmp_path / "cache")
    assert {p.name for p in pulled.iterdir()} >= set(_digests(tiny_model_dir))


def test_push_names_the_model_after_the_arch_unless_told(
    tmp_path: Path, registry_address: str, capsys
) -> None:
    base = ["models", "build-tiny", "--arch", "qwen2", "--push", "--registry", registry_address]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.split()[-1] == "tiny-qwen2@1"
    assert main([*base, "--out", str(tmp_path / "b"), "--name", "acme/tiny"]) == 0
    assert capsys.readouterr().out.split()[-1] == "acme/tiny@1"


def test_push_to_an_unreachable_registry_keeps_the_build(tmp_path: Path, capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{sock.getsockname()[1]}"
    out = tmp_path / "tiny"
    assert main(["models", "build-tiny", "--out", str(out), "--push", "--registry", nobody]) == 1
    assert f"built {out} but could not push it" in capsys.readouterr().err
    assert (out / "model.safetensors").is_file()


def test_joins_a_models_group_registered_by_another_package() -> None:
    parser = argparse.ArgumentParser(prog="cairn")
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models").add_subparsers(dest="models_command", required=True)
    models.add_parser("list").set_defaults(func="list")
    register(sub)
    assert parser.parse_args(["models", "list"]).func == "list"
    args = parser.parse_args(["models", "build-tiny", "--out", "x", "--arch", "mistral"])
    assert (args.out, args.arch) == (Path("x"), "mistral")
