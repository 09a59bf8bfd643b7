"""Checkpoints on the job's work dir: written by every rank, published atomically, rotated.

A checkpoint directory only gets its final name once every rank has written
its part, so a crash mid-save leaves the previous checkpoint as the newest
one, and the store records it only after the rename.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .backends import Backend
from .distributed import Dist

_PREFIX = "step-"
_PARTIAL = ".partial"
_META = "checkpoint.json"


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"{_PREFIX}{step:09d}"


def save(backend: Backend, dist: Dist, root: Path, step: int, extra: dict[str, Any]) -> Path:
    final = checkpoint_dir(root, step)
    partial = final.with_name(final.name + _PARTIAL)
    if dist.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    backend.save(partial, extra)
    dist.barrier()
    if dist.is_main:
        (partial / _META).write_text(json.dumps({"step": step, **extra}))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    dist.barrier()
    return final


def load(backend: Backend, directory: Path) -> dict[str, Any]:
    if not (directory / _META).is_file():
        raise ValueError(f"checkpoint {directory} is missing or incomplete")
    return backend.load(directory)


def rotate(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (0: keep all) and any half-written ones."""
    for partial in root.glob(f"{_PREFIX}*{_PARTIAL}"):
        shutil.rmtree(partial, ignore_errors=True)
    done = sorted(p for p in root.glob(f"{_PREFIX}*") if not p.name.endswith(_PARTIAL))
    if keep > 0:
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
