"""`cairn worker serve`: a standalone worker process (outside Ray)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from cairn.common.server import add_serve_command
    from cairn.services.worker.config import WorkerConfig

    parser = subparsers.add_parser("worker", help="model worker: weights, paged KV cache, forward, sampling")
    commands = parser.add_subparsers(dest="worker_command", metavar="COMMAND", required=True)

    def build(config: WorkerConfig):
        from cairn.services.worker.server import build as build_worker

        return build_worker(config)

    add_serve_command(commands, WorkerConfig, build)
