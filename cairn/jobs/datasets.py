"""Files jobs read (datasets, calibration text): a local path, a URL fsspec can open, or a registry
artifact "ref:path"; fetched once per attempt and checked by digest."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path
from typing import Any

from cairn.common.errors import DataLoss, InvalidArgument, NotFound
from cairn.services.registry.refs import parse_ref


def fetch(uri: str, download_dir: Path, registry: Any, cache_dir: Path | None) -> Path:
    """A local file holding `uri`'s bytes."""
    if uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
    elif "://" in uri:
        import fsspec

        path = download_dir / Path(uri.rstrip("/")).name
        if not path.exists():
            download_dir.mkdir(parents=True, exist_ok=True)
            # Every rank may download at once: each into its own file, renamed into place whole.
            partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
            with fsspec.open(uri, "rb") as source, open(partial, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
            partial.rename(path)
    elif ":" in uri and not Path(uri).exists():
        ref, _, inside = uri.partition(":")
        parse_ref(ref)
        root = registry.materialize(ref, cache_dir)
        path = root / inside
        if not path.resolve().is_relative_to(root.resolve()):
            raise InvalidArgument(f"dataset {uri!r}: the path after ':' leaves the artifact")
    else:
        path = Path(uri)
    if not path.is_file():
        raise NotFound(f"dataset {uri!r}: no such file ({path})")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, what: str) -> str:
    actual = sha256_of(path)
    if expected and actual != expected:
        raise DataLoss(f"{what} {path.name} has sha256 {actual}, but the job expects {expected}")
    return actual
