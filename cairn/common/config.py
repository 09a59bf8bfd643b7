"""Service configuration: one pydantic schema per service, filled from four sources.

Precedence is command-line flags > environment > YAML file > schema defaults, so a
Helm chart ships a ConfigMap, a pod overrides single values through env, and a
developer can still override anything on the command line.

Names are derived from the schema, so a field exists in every source at once:

    field `port`            flag --port          env CAIRN_REGISTRY_PORT        yaml `port:`
    field `shutdown_grace_s` flag --shutdown-grace-s env CAIRN_REGISTRY_SHUTDOWN_GRACE_S
    nested `db.url`         flag --db.url        env CAIRN_REGISTRY_DB_URL      yaml `db: {url: ...}`

The YAML file comes from `--config FILE`, else the `config_file` argument, else
`CAIRN_<SERVICE>_CONFIG`. Lists and mappings given as flags or env values are
parsed as YAML flow text (`[a, b]`, `{k: v}`); an empty value sets an optional
field to None. Any bad value raises one ConfigError naming its source.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticUndefined

DEFAULT_ENV_PREFIX = "CAIRN_"

# Flag values land in the argparse namespace under this prefix so they never
# collide with a CLI's own arguments (subcommand names, handler functions).
_DEST_PREFIX = "cairn_config:"
_CONFIG_FILE_DEST = _DEST_PREFIX + "<file>"


# Services redeclare `port` and `metrics_port` with their own defaults; these
# keep the range check and the help text when they do.
GrpcPort = Annotated[int, Field(ge=0, le=65535, description="gRPC port; 0 binds an ephemeral port")]
MetricsPort = Annotated[
    int, Field(ge=0, le=65535, description="Prometheus and /healthz HTTP port; 0 disables")
]


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


def cairn_home(*parts: str) -> Path:
    """A path under the state directory: $CAIRN_HOME, else ~/.cairn."""
    home = os.environ.get("CAIRN_HOME")
    return (Path(home) if home else Path.home() / ".cairn").joinpath(*parts)


class ServiceConfig(BaseModel):
    """Settings every service has. Subclasses set `service_name` and add their own fields.

    A subclass overrides a default by redeclaring the field, e.g. `port: GrpcPort = 50055`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    service_name: ClassVar[str] = "service"

    host: str = Field("127.0.0.1", description="address to bind (0.0.0.0 or :: in a cluster)")
    port: GrpcPort = 0
    metrics_port: MetricsPort = 0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    tls_cert: Path | None = Field(None, description="PEM server certificate chain; enables TLS")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle; set: clients must present a cert")
    shutdown_grace_s: float = Field(10.0, ge=0, description="seconds in-flight RPCs get to finish on SIGTERM")
    max_message_mb: int = Field(64, gt=0, le=2047, description="largest gRPC message sent or received, MiB")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _tls_complete(self) -> ServiceConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key as well")
        return self


T = TypeVar("T", bound=ServiceConfig)


@dataclass(frozen=True)
class _Leaf:
    """One settable value of a schema, possibly inside nested models."""

    path: tuple[str, ...]
    annotation: Any
    help: str

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def flag(self) -> str:
        return "--" + ".".join(part.replace("_", "-") for part in self.path)

    @property
    def dest(self) -> str:
        return _DEST_PREFIX + self.dotted

    def env_name(self, prefix: str) -> str:
        return prefix + "_".join(self.path).upper()

    @property
    def is_bool(self) -> bool:
        return _strip_optional(self.annotation) is bool

    @property
    def is_structured(self) -> bool:
        bare = _strip_optional(self.annotation)
        return typing.get_origin(bare) in (list, tuple, set, frozenset, dict) or bare in (list, dict)

    @property
    def is_optional(self) -> bool:
        return _strip_optional(self.annotation) is not self.annotation


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    bare = _strip_optional(annotation)
    return bare if isinstance(bare, type) and issubclass(bare, BaseModel) else None


def _leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[_Leaf]:
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is not None:
            yield from _leaves(nested, (*prefix, name))
            continue
        text = field.description or ""
        if field.default is not PydanticUndefined and field.default is not None:
            text = f"{text} (default: {field.default})".strip()
        yield _Leaf((*prefix, name), field.annotation, text)


def env_prefix_for(schema: type[ServiceConfig], env_prefix: str = DEFAULT_ENV_PREFIX) -> str:
    return f"{env_prefix}{schema.service_name.upper().replace('-', '_')}_"


def _schema_leaves(schema: type[ServiceConfig], prefix: str) -> list[_Leaf]:
    leaves = list(_leaves(schema))
    seen: dict[str, _Leaf] = {}
    for leaf in leaves:
        other = seen.setdefault(leaf.env_name(prefix), leaf)
        if other is not leaf:
            clash = f"fields {other.dotted!r} and {leaf.dotted!r} share one env name"
            raise TypeError(f"{schema.__name__}: {clash}")
    return leaves


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"command line: {message}")


def add_config_arguments(
    parser: argparse.ArgumentParser, schema: type[ServiceConfig], env_prefix: str = DEFAULT_ENV_PREFIX
) -> None:
    """Add `--config FILE` and one flag per schema field; read them back with `config_from_args`."""
    prefix = env_prefix_for(schema, env_prefix)
    group = parser.add_argument_group(
        f"{schema.service_name} configuration",
        f"precedence: flags > {prefix}* environment > --config YAML > defaults",
    )
    group.add_argument(
        "--config",
        dest=_CONFIG_FILE_DEST,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"YAML config file (env {prefix}CONFIG)",
    )
    for leaf in _schema_leaves(schema, prefix):
        # argparse %-formats help strings; a literal % in a description must survive.
        help_text = f"{leaf.help} [env {leaf.env_name(prefix)}]".strip().replace("%", "%%")
        if leaf.is_bool:
            group.add_argument(
                leaf.flag,
                dest=leaf.dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            metavar = leaf.path[-1].upper()
            group.add_argument(
                leaf.flag, dest=leaf.dest, metavar=metavar, default=argparse.SUPPRESS, help=help_text
            )


def config_from_args(
    schema: type[T],
    args: argparse.Namespace,
    *,
    env_prefix: str = DEFAULT_ENV_PREFIX,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """Build the config from parsed flags (see `add_config_arguments`), the environment and the YAML file."""
    flags = {k[len(_DEST_PREFIX) :]: v for k, v in vars(args).items() if k.startswith(_DEST_PREFIX)}
    return _load(schema, flags, env_prefix, config_file, os.environ if env is None else env)


def load_config(
    schema: type[T],
    argv: Sequence[str] | None = None,
    env_prefix: str = DEFAULT_ENV_PREFIX,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> T:
    """Parse `argv` (None: no flags, not sys.argv) against the schema's flags and load the config."""
    parser = _RaisingParser(prog=schema.service_name, add_help=False)
    add_config_arguments(parser, schema, env_prefix)
    args = parser.parse_args(list(argv or ()))
    return config_from_args(schema, args, env_prefix=env_prefix, config_file=config_file, env=env)


def _load(
    schema: type[T],
    flags: dict[str, Any],
    env_prefix: str,
    config_file: str | os.PathLike[str] | None,
    env: Mapping[str, str],
) -> T:
    prefix = env_prefix_for(schema, env_prefix)
    leaves = _schema_leaves(schema, prefix)
    problems: list[str] = []
    sources: dict[tuple[str, ...], str] = {}
    merged: dict[str, Any] = {}

    file_flag = flags.pop("<file>", None)
    path = file_flag or config_file or env.get(prefix + "CONFIG")
    if path:
        merged = _read_yaml(Path(path), schema, sources, problems)

    by_path = {leaf.dotted: leaf for leaf in leaves}
    for leaf in leaves:
        name = leaf.env_name(prefix)
        if name in env:
            _assign(merged, sources, problems, leaf, env[name], f"environment variable {name}")
    for dotted, value in flags.items():
        leaf = by_path[dotted]
        _assign(merged, sources, problems, leaf, value, f"flag {leaf.flag}")

    if problems:
        raise ConfigError(_report(schema, problems))
    try:
        return schema.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_report(schema, [_describe(e, sources, prefix) for e in exc.errors()])) from None


def _report(schema: type[ServiceConfig], problems: list[str]) -> str:
    return f"invalid {schema.service_name} configuration:\n  " + "\n  ".join(problems)


def _read_yaml(
    path: Path, schema: type[BaseModel], sources: dict[tuple[str, ...], str], problems: list[str]
) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        problems.append(f"config file {path}: cannot read it ({exc.strerror})")
        return {}
    except yaml.YAMLError as exc:
        problems.append(f"config file {path}: not valid YAML ({exc})")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"config file {path}: expected a mapping of settings, got {type(data).__name__}")
        return {}
    _check_keys(data, schema, (), path, sources, problems)
    return data


def _check_keys(
    data: dict[Any, Any],
    model: type[BaseModel],
    at: tuple[str, ...],
    path: Path,
    sources: dict[tuple[str, ...], str],
    problems: list[str],
) -> None:
    for key, value in data.items():
        dotted = ".".join((*at, str(key)))
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            known = ", ".join(model.model_fields)
            problems.append(f"config file {path}: unknown key {dotted!r} (known keys here: {known})")
            continue
        nested = _nested_model(field.annotation)
        if nested is not None and isinstance(value, dict):
            _check_keys(value, nested, (*at, key), path, sources, problems)
        else:
            sources[(*at, key)] = f"config file {path} (key {dotted})"


def _assign(
    merged: dict[str, Any],
    sources: dict[tuple[str, ...], str],
    problems: list[str],
    leaf: _Leaf,
    raw: Any,
    source: str,
) -> None:
    value = raw
    if isinstance(raw, str):
        if raw == "" and leaf.is_optional:
            value = None
        elif leaf.is_structured:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                problems.append(f"{leaf.dotted}: {source} = {raw!r} is not a YAML/JSON list or mapping")
                return
    node = merged
    for part in leaf.path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf.path[-1]] = value
    sources[leaf.path] = source


def _describe(error: Mapping[str, Any], sources: dict[tuple[str, ...], str], env_prefix: str) -> str:
    loc = tuple(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ").replace("Input should be ", "expected ", 1)
    message = message.replace("expected greater", "expected a value greater").replace(
        "expected less", "expected a value less"
    )
    if error["type"] == "missing":
        leaf = _Leaf(loc, None, "")
        return (
            f"{leaf.dotted}: required; set {leaf.flag}, {leaf.env_name(env_prefix)} "
            f"or {leaf.dotted!r} in the config file"
        )
    where = next((sources[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in sources), None)
    if not loc:
        return message
    if where is None:
        return f"{'.'.join(loc)}: {message}"
    return f"{'.'.join(loc)}: {message} (got {error.get('input')!r} from {where})"
