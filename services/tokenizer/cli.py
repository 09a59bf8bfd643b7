"""`cairn tokenizer serve`: the tokenizer service."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    from cairn.common.server import add_serve_command
    from cairn.services.tokenizer.config import TokenizerConfig

    parser = subparsers.add_parser(
        "tokenizer", help="tokenization, chat templates and incremental detokenization"
    )
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True)

    def build(config: TokenizerConfig) -> Any:
        from cairn.services.tokenizer.server import tokenizer_services

        return tokenizer_services(config)

    add_serve_command(commands, TokenizerConfig, build)
