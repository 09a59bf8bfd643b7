"""Client subcommands shared by every service CLI (`cairn registry ls`, `cairn train watch`, ...).

Each such command takes the service address as a flag, opens one client,
runs its handler and turns typed errors into one line on stderr and exit
status 1, so every service's commands fail the same way.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cairn.common.errors import CairnError, Unavailable


class ServiceClient(Protocol):
    target: str

    def close(self) -> None: ...


@dataclass(frozen=True)
class ClientCommands:
    """How a CLI reaches its service: `prog` prefixes messages ("cairn registry"),
    `service` names it ("registry"), `flag` is the address option ("--registry"),
    `env` and `default` describe where the client looks when the flag is absent,
    and `connect(address_or_none)` opens a client."""

    prog: str
    service: str
    flag: str
    env: str
    default: str
    connect: Callable[[str | None], ServiceClient]

    def add(
        self,
        sub: argparse._SubParsersAction,
        name: str,
        help_text: str,
        handler: Callable[[Any, argparse.Namespace], int],
    ) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        parser.add_argument(
            self.flag,
            dest="service_address",
            metavar="ADDR",
            help=f"{self.service} address (default ${self.env} or {self.default})",
        )
        parser.set_defaults(func=functools.partial(self._run, name, handler))
        return parser

    def _run(
        self, name: str, handler: Callable[[Any, argparse.Namespace], int], args: argparse.Namespace
    ) -> int:
        client = self.connect(args.service_address)
        try:
            return handler(client, args)
        except Unavailable as e:
            print(
                f"{self.prog} {name}: {self.service} at {client.target} unavailable ({e.message}); "
                f"is `cairn {self.service} serve` running there? Set {self.flag} or {self.env} otherwise.",
                file=sys.stderr,
            )
        except CairnError as e:
            print(f"{self.prog} {name}: {e.message}", file=sys.stderr)
        finally:
            client.close()
        return 1
