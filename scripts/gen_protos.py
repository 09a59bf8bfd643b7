"""Generate the Python gRPC stubs in cairn/v1/ from protos/cairn/v1/*.proto.

One command, used by developers and by the stubs-in-sync test:
    python scripts/gen_protos.py           # rewrite cairn/v1/
    python scripts/gen_protos.py --check   # exit 1 if cairn/v1/ is stale
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = ROOT / "cairn" / "v1"
INIT = '"""Generated gRPC stubs for the cairn.v1 contracts (scripts/gen_protos.py)."""\n'


def generate(out_root: Path) -> Path:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "cairn" / "v1").glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package = out_root / "cairn" / "v1"
    (package / "__init__.py").write_text(INIT)
    return package


def stale_files(generated: Path) -> list[str]:
    names = {p.name for p in generated.iterdir()} | {p.name for p in OUT_PACKAGE.glob("*") if p.is_file()}
    stale = []
    for name in sorted(names):
        ours, fresh = OUT_PACKAGE / name, generated / name
        if not (ours.exists() and fresh.exists() and filecmp.cmp(ours, fresh, shallow=False)):
            stale.append(name)
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether cairn/v1 is up to date")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        if args.check:
            stale = stale_files(generated)
            if stale:
                print("stale generated stubs (run scripts/gen_protos.py):", ", ".join(stale))
                return 1
            print("cairn/v1 is up to date")
            return 0
        shutil.rmtree(OUT_PACKAGE, ignore_errors=True)
        shutil.copytree(generated, OUT_PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"generated {len(list(OUT_PACKAGE.glob('*_pb2*.py')))} modules in {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
