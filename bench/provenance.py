"""What every bench result records besides its figures: the commit, the machine, the library versions,
the command line and the settings, so a committed JSON says exactly what was measured where."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout; pass --commit)"


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"host": platform.node(), "cpu_count": os.cpu_count(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "gpu_memory_gib": props.total_memory / 2**30,
            "gpus": torch.cuda.device_count(),
        }
    return info


def provenance(args: argparse.Namespace, device: torch.device, **versions: str) -> dict[str, Any]:
    """The header of a results JSON; `versions` names other libraries measured against (transformers)."""
    return {
        "commit": getattr(args, "commit", None) or git_commit(),
        "machine": machine(device),
        "torch": torch.__version__,
        **versions,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {
            k: str(v) if isinstance(v, Path | torch.device) else v
            for k, v in vars(args).items()
            if not callable(v)
        },
    }


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
