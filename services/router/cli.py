"""`cairn router serve` (the public API) and `cairn chat` (a conversation in the terminal)."""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    from cairn.common.server import add_serve_command
    from cairn.services.router.config import RouterConfig

    parser = subparsers.add_parser("router", help="public gRPC API and OpenAI-compatible HTTP API")
    commands = parser.add_subparsers(dest="router_command", metavar="COMMAND", required=True)

    def build(config: RouterConfig) -> Any:
        from cairn.services.router.server import router_services

        return router_services(config)

    add_serve_command(commands, RouterConfig, build)

    chat = subparsers.add_parser("chat", help="talk to a model through the router, in the terminal")
    chat.add_argument(
        "--router", default=os.environ.get("CAIRN_ROUTER", "127.0.0.1:50051"), help="router gRPC address"
    )
    chat.add_argument("--model", default="", help="model to talk to (default: the first the router serves)")
    chat.add_argument("--system", default="", help="system prompt")
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--max-tokens", type=int, default=512)
    chat.add_argument(
        "--api-key", default=os.environ.get("CAIRN_API_KEY", ""), help="API key (default: $CAIRN_API_KEY)"
    )
    chat.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> int:
    from cairn.services.router.terminal_chat import run_chat

    return run_chat(
        args.router,
        model=args.model,
        api_key=args.api_key,
        system=args.system,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
    )
