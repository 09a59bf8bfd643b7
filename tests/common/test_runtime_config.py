"""Config loading: precedence flags > env > YAML > defaults, and errors a person can act on."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from cairn.common.config import (
    ConfigError,
    GrpcPort,
    ServiceConfig,
    add_config_arguments,
    config_from_args,
    load_config,
)


class Database(BaseModel):
    url: str = "sqlite:///registry.db"
    pool_size: int = Field(5, gt=0)


class RegistryConfig(ServiceConfig):
    service_name = "registry"

    port: GrpcPort = 50055
    db: Database = Database()
    tags: list[str] = []
    read_only: bool = False
    blob_root: Path | None = None


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(text)
    return path


def test_defaults_when_no_source_sets_anything() -> None:
    config = load_config(RegistryConfig, env={})
    assert config.port == 50055
    assert config.host == "127.0.0.1"
    assert config.metrics_port == 0
    assert config.shutdown_grace_s == 10
    assert config.log_format == "json"
    assert config.db == Database()
    assert config.tls_cert is None


def test_flags_beat_env_beat_yaml_beat_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "port: 1\nmetrics_port: 1\nmax_message_mb: 1\ndb:\n  pool_size: 1\n")
    env = {"CAIRN_REGISTRY_PORT": "2", "CAIRN_REGISTRY_METRICS_PORT": "2", "CAIRN_REGISTRY_DB_POOL_SIZE": "2"}
    config = load_config(RegistryConfig, ["--port", "3", "--db.pool-size", "3"], config_file=path, env=env)
    assert config.port == 3
    assert config.db.pool_size == 3
    assert config.metrics_port == 2
    assert config.max_message_mb == 1
    assert config.db.url == "sqlite:///registry.db"
    assert config.shutdown_grace_s == 10


def test_nested_yaml_merges_with_nested_env(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "db:\n  url: postgresql://db/cairn\n")
    config = load_config(RegistryConfig, config_file=path, env={"CAIRN_REGISTRY_DB_POOL_SIZE": "9"})
    assert config.db == Database(url="postgresql://db/cairn", pool_size=9)


def test_real_process_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_REGISTRY_LOG_LEVEL", "debug")
    assert load_config(RegistryConfig).log_level == "DEBUG"


def test_config_file_from_flag_beats_argument_beats_env(tmp_path: Path) -> None:
    files = {}
    for name in ("flag", "arg", "env"):
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(f"db: {{url: {name}}}\n")
    env = {"CAIRN_REGISTRY_CONFIG": str(files["env"])}
    assert load_config(RegistryConfig, env=env).db.url == "env"
    assert load_config(RegistryConfig, config_file=files["arg"], env=env).db.url == "arg"
    flag = ["--config", str(files["flag"])]
    assert load_config(RegistryConfig, flag, config_file=files["arg"], env=env).db.url == "flag"


def test_booleans_lists_and_empty_optional_values() -> None:
    env = {
        "CAIRN_REGISTRY_READ_ONLY": "true",
        "CAIRN_REGISTRY_TAGS": "[a, b]",
        "CAIRN_REGISTRY_BLOB_ROOT": "",
    }
    config = load_config(RegistryConfig, env=env)
    assert config.read_only is True
    assert config.tags == ["a", "b"]
    assert config.blob_root is None
    flags = ["--no-read-only", "--tags", '["c"]', "--blob-root", "/data"]
    config = load_config(RegistryConfig, flags, env=env)
    assert config.read_only is False
    assert config.tags == ["c"]
    assert config.blob_root == Path("/data")


def test_bad_flag_value_names_the_flag_field_and_expectation() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(RegistryConfig, ["--port", "http"], env={})
    message = str(info.value)
    assert "port" in message
    assert "flag --port" in message
    assert "'http'" in message
    assert "expected a valid integer" in message
    assert "pydantic" not in message


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(RegistryConfig, env={"CAIRN_REGISTRY_LOG_FORMAT": "xml"})
    message = str(info.value)
    assert "log_format" in message
    assert "environment variable CAIRN_REGISTRY_LOG_FORMAT" in message
    assert "expected 'json' or 'text'" in message


def test_bad_yaml_value_names_the_file_and_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "db:\n  pool_size: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(RegistryConfig, config_file=path, env={})
    message = str(info.value)
    assert f"config file {path}" in message
    assert "db.pool_size" in message
    assert "expected a value greater than 0" in message


def test_every_bad_value_is_reported_at_once(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "shutdown_grace_s: soon\n")
    with pytest.raises(ConfigError) as info:
        load_config(
            RegistryConfig, ["--port", "-1"], config_file=path, env={"CAIRN_REGISTRY_DB_POOL_SIZE": "x"}
        )
    message = str(info.value)
    for part in ("flag --port", "CAIRN_REGISTRY_DB_POOL_SIZE", "shutdown_grace_s", str(path)):
        assert part in message


@pytest.mark.parametrize(
    ("text", "key"), [("prot: 1\n", "'prot'"), ("db:\n  uri: x\n", "'db.uri'")], ids=["top", "nested"]
)
def test_unknown_yaml_key_is_an_error(tmp_path: Path, text: str, key: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(RegistryConfig, config_file=path, env={})
    message = str(info.value)
    assert f"unknown key {key}" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [("- port\n", "expected a mapping"), ("port: [1\n", "not valid YAML")],
    ids=["list", "syntax"],
)
def test_malformed_yaml_is_an_error(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(RegistryConfig, config_file=write_yaml(tmp_path, text), env={})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(RegistryConfig, ["--config", str(tmp_path / "absent.yaml")], env={})


def test_unknown_flag_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--prot"):
        load_config(RegistryConfig, ["--prot", "1"], env={})


def test_unrelated_env_vars_are_ignored() -> None:
    # Kubernetes injects <SERVICE>_SERVICE_HOST style variables into every pod.
    env = {"CAIRN_REGISTRY_SERVICE_HOST": "10.0.0.1", "CAIRN_TOKENIZER_PORT": "1"}
    assert load_config(RegistryConfig, env=env).port == 50055


def test_required_field_error_says_how_to_set_it() -> None:
    class JobConfig(ServiceConfig):
        service_name = "trainer"
        registry_target: str

    with pytest.raises(ConfigError) as info:
        load_config(JobConfig, env={})
    message = str(info.value)
    assert "registry_target" in message
    assert "--registry-target" in message
    assert "CAIRN_TRAINER_REGISTRY_TARGET" in message


def test_tls_settings_must_be_complete() -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key must be set together"):
        load_config(RegistryConfig, ["--tls-cert", "server.pem"], env={})
    with pytest.raises(ConfigError, match="mutual TLS"):
        load_config(RegistryConfig, ["--tls-client-ca", "ca.pem"], env={})


def test_config_is_immutable() -> None:
    config = load_config(RegistryConfig, env={})
    with pytest.raises(ValueError, match="frozen"):
        config.port = 1


def test_colliding_env_names_are_rejected_when_the_schema_is_used() -> None:
    class Inner(BaseModel):
        size: int = 1

    class Clashing(ServiceConfig):
        service_name = "clash"
        db: Inner = Inner()
        db_size: int = 1

    with pytest.raises(TypeError, match="share one env name"):
        load_config(Clashing, env={})


def test_cli_parser_carries_the_schema_next_to_its_own_arguments(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="cairn")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--port-file")
    add_config_arguments(serve, RegistryConfig)
    help_text = serve.format_help()
    for flag in ("--config", "--port", "--db.url", "--db.pool-size", "--read-only", "--no-read-only"):
        assert flag in help_text
    assert "CAIRN_REGISTRY_DB_POOL_SIZE" in help_text
    assert "ephemeral port" in help_text
    assert "default: 50055" in help_text

    args = parser.parse_args(["serve", "--port-file", "p", "--db.url", "postgresql://x", "--port", "7"])
    config = config_from_args(RegistryConfig, args, env={"CAIRN_REGISTRY_PORT": "8"})
    assert args.port_file == "p"
    assert config.port == 7
    assert config.db.url == "postgresql://x"
