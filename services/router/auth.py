"""API keys: who may call the router, as Bearer tokens in HTTP headers or gRPC metadata.

The keys file holds one key per line, optionally followed by `name=NAME`
(shown in logs instead of the key) and `rpm=N` (this key's own request rate);
blank lines and lines starting with "#" are ignored:

    sk-team-a-3f9c2e  name=team-a  rpm=600
    sk-batch-77d1a0   name=batch

Keys are kept only as SHA-256 digests, so a heap dump or a log line never
shows one. With no keys configured authentication is off.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cairn.common.errors import Unauthenticated

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    """The caller of one request: the key's name, and the key's own rate if it has one."""

    name: str
    rpm: float | None = None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys_file(text: str, source: str) -> dict[bytes, Principal]:
    keys: dict[bytes, Principal] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, *options = line.split()
        name, rpm = f"key-{_digest(key).hex()[:8]}", None
        for option in options:
            field, _, value = option.partition("=")
            if field == "name" and value:
                name = value
            elif field == "rpm":
                try:
                    rpm = float(value)
                except ValueError:
                    raise ValueError(f"{source}:{number}: rpm must be a number, got {value!r}") from None
                if rpm < 0:
                    raise ValueError(f"{source}:{number}: rpm must be >= 0, got {value!r}")
            else:
                raise ValueError(f"{source}:{number}: unknown option {option!r}; use name=NAME or rpm=N")
        keys[_digest(key)] = Principal(name, rpm)
    return keys


class ApiKeys:
    def __init__(self, keys: dict[bytes, Principal]) -> None:
        self._keys = keys

    @classmethod
    def load(cls, path: Path | None = None, inline: Iterable[str] = ()) -> ApiKeys:
        keys = parse_keys_file(path.read_text(), str(path)) if path is not None else {}
        for i, key in enumerate(inline):
            keys.setdefault(_digest(key), Principal(f"key-{i}"))
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an `Authorization` value ("Bearer KEY"); Unauthenticated if none is valid."""
        if not self._keys:
            return Principal(ANONYMOUS)
        if not authorization:
            raise Unauthenticated(
                "missing API key: send it as 'Authorization: Bearer KEY' (gRPC metadata 'authorization')"
            )
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("malformed Authorization value: expected 'Bearer KEY'")
        principal = self._keys.get(_digest(key.strip()))
        if principal is None:
            raise Unauthenticated("invalid API key")
        return principal
