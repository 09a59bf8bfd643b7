"""Fills `.whl/` with the wheels a CUDA box's image lacks, for Python 3.12 on x86-64 Linux,
at the versions installed in this checkout's `.venv` (what CI tests), so `scripts/gpu_tests.sh`
can install them there without a package index.

    .venv/bin/python scripts/device_wheels.py          # then carry .whl (git-ignored) along

Ray's wheel (79 MB) is rewritten without its Java jars, dashboard front end and the
RLlib/Data/Serve/Train/Tune/LLM libraries, none of which a cairn worker imports: 39 MB.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / ".whl"
# What the serving, test and benchmark paths import that the CUDA image (torch, transformers,
# triton, peft, grpcio of its own, ...) does not have at a version cairn's stubs accept.
PACKAGES = [
    "grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf", "typing_extensions",
    "pydantic", "pydantic_core", "annotated-types", "typing-inspection", "sqlalchemy",
    "fastapi", "starlette", "uvicorn", "opentelemetry-api", "compressed-tensors", "loguru",
    "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
    "openai", "httpx2", "httpcore2", "truststore", "anyio", "idna", "h11", "jiter", "sniffio",
    "ray",
]  # fmt: skip
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
RAY_UNUSED = re.compile(r"^ray/(jars|dashboard/client|rllib|data|serve|train|tune|llm)/")


def download(requirement: str) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(OUT), requirement],
        check=True,
    )  # fmt: skip


def slim_ray(wheel: Path) -> None:
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if RAY_UNUSED.match(item.filename):
                continue
            data = source.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                kept = [line for line in data.decode().splitlines() if not RAY_UNUSED.match(line)]
                data = ("\n".join(kept) + "\n").encode()
            target.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    slim.replace(wheel)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name in PACKAGES:
        download(f"{name}=={version(name)}")
    for wheel in OUT.glob("ray-*.whl"):
        slim_ray(wheel)
    total = sum(w.stat().st_size for w in OUT.glob("*.whl"))
    print(f"{len(list(OUT.glob('*.whl')))} wheels, {total / 2**20:.0f} MiB in {OUT}")


if __name__ == "__main__":
    main()
