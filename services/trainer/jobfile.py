"""`cairn train submit job.yaml`: a YAML file mirroring TrainJobSpec, read with errors a person can fix.

Field names are TrainJobSpec's. Conveniences over the proto's JSON form:
model references as plain strings (`base_model: llama@3`), enum values by their
short name in any case (`method: lora`, `format: messages`, `zero_stage: 3`,
`runner: ray`), and label values of any scalar type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor, json_format

from cairn.common.errors import InvalidArgument
from cairn.v1 import trainer_pb2

_ENUM_PREFIX = {
    "cairn.v1.TrainMethod": "TRAIN_METHOD_",
    "cairn.v1.DatasetFormat": "DATASET_FORMAT_",
    "cairn.v1.ZeroStage": "ZERO_STAGE_",
    "cairn.v1.RunnerKind": "RUNNER_KIND_",
}
_ZERO_NUMBERS = {0: "NONE", 2: "2", 3: "3"}


def load_job_file(path: Path) -> trainer_pb2.TrainJobSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise InvalidArgument(f"{path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise InvalidArgument(f"{path}: not valid YAML ({e})") from None
    return spec_from_yaml(data, str(path))


def spec_from_yaml(data: Any, source: str = "job file") -> trainer_pb2.TrainJobSpec:
    if not isinstance(data, dict):
        raise InvalidArgument(
            f"{source}: expected a mapping of TrainJobSpec fields, got {type(data).__name__}"
        )
    normalized = _normalize(data, trainer_pb2.TrainJobSpec.DESCRIPTOR, "", source)
    try:
        return json_format.ParseDict(normalized, trainer_pb2.TrainJobSpec())
    except json_format.ParseError as e:
        raise InvalidArgument(f"{source}: {e}") from None


def _normalize(data: dict[str, Any], message: descriptor.Descriptor, at: str, source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{at}{key}"
        field = message.fields_by_name.get(key) if isinstance(key, str) else None
        if field is None:
            known = ", ".join(message.fields_by_name)
            raise InvalidArgument(f"{source}: unknown key {name!r}; known keys here: {known}")
        if value is None:
            continue
        out[key] = _value(field, value, name, source)
    return out


def _value(field: descriptor.FieldDescriptor, value: Any, name: str, source: str) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise InvalidArgument(f"{source}: {name} must be a mapping")
        return {str(k): str(v) for k, v in value.items()}
    if field.is_repeated:
        if not isinstance(value, list):
            raise InvalidArgument(f"{source}: {name} must be a list")
        return [_single(field, item, f"{name}[{i}]", source) for i, item in enumerate(value)]
    return _single(field, value, name, source)


def _single(field: descriptor.FieldDescriptor, value: Any, name: str, source: str) -> Any:
    if field.message_type is not None:
        if field.message_type.full_name == "cairn.v1.ModelRef" and isinstance(value, str):
            return {"ref": value}
        if not isinstance(value, dict):
            raise InvalidArgument(f"{source}: {name} must be a mapping of {field.message_type.name} fields")
        return _normalize(value, field.message_type, f"{name}.", source)
    if field.enum_type is not None:
        return _enum(field.enum_type, value, name, source)
    return value


def _enum(enum: descriptor.EnumDescriptor, value: Any, name: str, source: str) -> str:
    prefix = _ENUM_PREFIX.get(enum.full_name, "")
    if isinstance(value, int) and not isinstance(value, bool):
        short = _ZERO_NUMBERS.get(value, str(value)) if enum.full_name == "cairn.v1.ZeroStage" else str(value)
    else:
        short = str(value).strip().upper().replace("-", "_")
        if enum.full_name == "cairn.v1.ZeroStage":
            short = short.removeprefix("ZERO").lstrip("_") or short
    candidate = short if short.startswith(prefix) else prefix + short
    if candidate in enum.values_by_name and not candidate.endswith("_UNSPECIFIED"):
        return candidate
    choices = ", ".join(
        v.name.removeprefix(prefix).lower().replace("_", "-")
        for v in enum.values
        if not v.name.endswith("_UNSPECIFIED")
    )
    raise InvalidArgument(f"{source}: {name} {value!r} is not one of {choices}")
