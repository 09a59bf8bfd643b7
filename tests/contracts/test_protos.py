"""The contracts: generated stubs match the .proto files, and every message,
field, enum, service and RPC carries a doc comment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
SERVICES = {"inference", "tokenizer", "scheduler", "worker", "trainer", "quantizer", "registry"}


def test_one_file_per_service_plus_common() -> None:
    names = {p.stem for p in (PROTO_DIR / "cairn" / "v1").glob("*.proto")}
    assert names == SERVICES | {"common"}


def test_generated_stubs_are_in_sync() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("fds") / "all.pb"
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "cairn" / "v1").glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", "--include_source_info", f"-o{out}", *protos]
    assert protoc.main(args) == 0
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    return fds


def _undocumented(fd: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Paths (by name) of declarations without a leading comment.

    Source-info paths: 4 = message_type, 2 = field, 3 = nested_type,
    5 = enum_type (top-level) / 4 = enum_type (nested), 6 = service, 2 = method.
    """
    commented = {tuple(loc.path) for loc in fd.source_code_info.location if loc.leading_comments.strip()}
    missing: list[str] = []

    def check(path: tuple[int, ...], name: str) -> None:
        if path not in commented:
            missing.append(f"{fd.name}: {name}")

    def walk_message(msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str) -> None:
        name = f"{prefix}{msg.name}"
        check(path, f"message {name}")
        for i, field in enumerate(msg.field):
            check((*path, 2, i), f"field {name}.{field.name}")
        for i, nested in enumerate(msg.nested_type):
            if not nested.options.map_entry:
                walk_message(nested, (*path, 3, i), f"{name}.")
        for i, enum in enumerate(msg.enum_type):
            check((*path, 4, i), f"enum {name}.{enum.name}")

    for i, msg in enumerate(fd.message_type):
        walk_message(msg, (4, i), "")
    for i, enum in enumerate(fd.enum_type):
        check((5, i), f"enum {enum.name}")
    for i, service in enumerate(fd.service):
        check((6, i), f"service {service.name}")
        for j, method in enumerate(service.method):
            check((6, i, 2, j), f"rpc {service.name}.{method.name}")
    return missing


def test_every_declaration_is_documented(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    missing = [m for fd in descriptor_set.file if fd.package == "cairn.v1" for m in _undocumented(fd)]
    assert not missing, "undocumented declarations:\n" + "\n".join(missing)


def test_every_service_is_versioned_in_cairn_v1(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    services = {s.name for fd in descriptor_set.file if fd.package == "cairn.v1" for s in fd.service}
    assert services == {"Inference", "Tokenizer", "Scheduler", "Worker", "Trainer", "Quantizer", "Registry"}
