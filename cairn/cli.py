"""The `cairn` command line.

Each command group lives next to the code it drives and exposes
`register(subparsers)`; this module only assembles them, so adding a command
never means editing another service's file. Command modules import heavy
dependencies (torch, ray) inside their handlers to keep `cairn --help` fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES: tuple[str, ...] = (
    "cairn.tiny.cli",
    "cairn.services.registry.cli",
    "cairn.services.worker.cli",
    "cairn.services.tokenizer.cli",
    "cairn.services.scheduler.cli",
    "cairn.services.trainer.cli",
    "cairn.services.quantizer.cli",
    "cairn.services.router.cli",
    "cairn.up",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cairn", description="cairn LLM platform")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def _quiet_deepspeed_on_cpu_hosts() -> None:
    """DeepSpeed, when installed, is imported by transformers on save/load and, on
    hosts without an accelerator, prints a fallback warning to stdout, which
    corrupts commands whose output is read by programs. Naming the CPU
    accelerator up front silences it; hosts with GPUs keep auto-detection."""
    if not any(os.path.exists(dev) for dev in ("/dev/nvidiactl", "/dev/dri", "/dev/kfd")):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main(argv: list[str] | None = None) -> int:
    _quiet_deepspeed_on_cpu_hosts()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
