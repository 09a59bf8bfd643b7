"""`cairn registry serve` as a real process, and where its configuration comes from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from registry_harness import free_port

from cairn.common.config import load_config
from cairn.services.registry.client import RegistryClient
from cairn.services.registry.config import RegistryConfig


def test_default_locations_follow_cairn_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAIRN_HOME", str(tmp_path))
    config = RegistryConfig()
    assert (config.port, config.metrics_port) == (50055, 9095)
    assert config.root == tmp_path / "registry"
    assert config.database() == f"sqlite:///{tmp_path}/registry/registry.db"
    assert config.blobs() == f"file://{tmp_path}/registry/blobs"
    monkeypatch.delenv("CAIRN_HOME")
    assert RegistryConfig().root == Path.home() / ".cairn" / "registry"


def test_settings_come_from_flags_env_and_yaml(tmp_path: Path) -> None:
    yaml_file = tmp_path / "registry.yaml"
    yaml_file.write_text(
        "blob_url: s3://models/prod\nblob_storage_options: {endpoint_url: http://minio:9000}\n"
    )
    env = {"CAIRN_REGISTRY_DATABASE_URL": "postgresql+psycopg://registry@db/registry"}
    config = load_config(RegistryConfig, ["--config", str(yaml_file), "--chunk-size", "65536"], env=env)
    assert config.database() == "postgresql+psycopg://registry@db/registry"
    assert config.blobs() == "s3://models/prod"
    assert config.blob_storage_options == {"endpoint_url": "http://minio:9000"}
    assert config.chunk_size == 65536


def test_serve_runs_until_sigterm(database_url: str, tmp_path: Path, small_dir: Path, name: str) -> None:
    port = free_port()
    abandoned = tmp_path / "root" / "blobs" / "uploads" / "from-a-crash"
    abandoned.parent.mkdir(parents=True)
    abandoned.write_bytes(b"partial")
    os.utime(abandoned, (0, 0))
    command = [
        sys.executable, "-m", "cairn.cli", "registry", "serve", "--port", str(port), "--metrics-port", "0",
        "--root", str(tmp_path / "root"), "--database-url", database_url, "--log-format", "text",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(
                health_pb2.HealthCheckRequest(service="cairn.v1.Registry"), wait_for_ready=True, timeout=60
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        with RegistryClient(f"127.0.0.1:{port}") as client:
            version = client.push_dir(small_dir, name)
            assert client.resolve(name) == version
        assert (tmp_path / "root" / "blobs" / "sha256").is_dir()
        assert not abandoned.exists()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "serving cairn.v1.Registry" in output


def test_serve_reports_bad_configuration(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cairn.cli",
            "registry",
            "serve",
            "--chunk-size",
            "0",
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "chunk_size" in result.stderr
