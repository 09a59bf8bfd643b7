"""A real service process for the drain tests: `python -m runtime_drain_server {serve,hooks} [config flags]`.

`serve` is built exactly like a service CLI (`add_serve_command` with an async
context manager owning resources); `hooks` drives `serve` directly with
shutdown hooks. Every step logs, so the test can check the order.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from runtime_echo import EchoConfig, echo_service

from cairn.common.config import add_config_arguments, config_from_args
from cairn.common.logging import configure_logging
from cairn.common.server import GrpcService, add_serve_command, serve

logger = logging.getLogger("cairn.test.drain")


@asynccontextmanager
async def build_services(config: EchoConfig) -> AsyncIterator[Sequence[GrpcService]]:
    logger.info("resources opened")
    yield [echo_service()]
    logger.info("resources closed")


def failing_hook() -> None:
    raise RuntimeError("hook failed")


async def async_hook() -> None:
    await asyncio.sleep(0)
    logger.info("async hook ran")


def serve_with_hooks(args: argparse.Namespace) -> int:
    config = config_from_args(EchoConfig, args)
    configure_logging(config.service_name, config.log_level, config.log_format)
    hooks = [failing_hook, async_hook, lambda: logger.info("sync hook ran")]
    asyncio.run(serve(config, [echo_service()], on_shutdown=hooks))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="echo")
    commands = parser.add_subparsers(required=True)
    add_serve_command(commands, EchoConfig, build_services)
    hooks = commands.add_parser("hooks")
    add_config_arguments(hooks, EchoConfig)
    hooks.set_defaults(func=serve_with_hooks)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
