"""Names and references: the grammar every registry entry point checks.

A reference picks one version of a model:

    name             the newest READY version (same as name@latest)
    name@latest      the newest READY version
    name@3           version 3
    name@production  whatever version the alias "production" points at

Names are 1-128 characters of [A-Za-z0-9._-], each segment starting with a
letter or digit, optionally namespaced by one "/" ("org/model"). Alias names
are [A-Za-z][A-Za-z0-9._-]* (at most 64), never "latest" in any case, so an
alias can never be mistaken for a version number or the newest version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cairn.common.errors import InvalidArgument

MAX_NAME_LENGTH = 128
MAX_ALIAS_LENGTH = 64
MAX_VERSION = 2**32 - 1
LATEST = "latest"

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_NAME_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})?")
_ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
_NUMBER_RE = re.compile(r"[1-9][0-9]*")
_PREFIX_RE = re.compile(r"[A-Za-z0-9._/-]*")

NAME_GRAMMAR = (
    "a model name is 1-128 characters of [A-Za-z0-9._-] starting with a letter or digit, "
    'optionally namespaced by one "/" (e.g. "llama-3.1-8b" or "acme/llama-3.1-8b")'
)
ALIAS_GRAMMAR = (
    f"an alias is 1-{MAX_ALIAS_LENGTH} characters of [A-Za-z0-9._-] starting with a letter, "
    f'and not "{LATEST}" (e.g. "production", "staging")'
)
REF_GRAMMAR = (
    'a reference is "name", "name@latest", "name@<version number>" or "name@<alias>" '
    f'(e.g. "acme/llama@3", "llama@production"); {NAME_GRAMMAR}'
)


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of `version` / `alias` is set, or neither for latest."""

    model: str
    version: int | None = None
    alias: str | None = None

    @property
    def is_latest(self) -> bool:
        return self.version is None and self.alias is None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.model}@{self.version}"
        return f"{self.model}@{self.alias or LATEST}"


def check_model_name(name: str, what: str = "model name") -> str:
    if not name:
        raise InvalidArgument(f"{what} is empty; {NAME_GRAMMAR}")
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(f"{what} {name!r} is malformed; {NAME_GRAMMAR}")
    return name


def check_alias_name(alias: str) -> str:
    if not alias:
        raise InvalidArgument(f"alias is empty; {ALIAS_GRAMMAR}")
    if alias.lower() == LATEST:
        raise InvalidArgument(f'"{alias}" is reserved for the newest version; {ALIAS_GRAMMAR}')
    if len(alias) > MAX_ALIAS_LENGTH or not _ALIAS_RE.fullmatch(alias):
        raise InvalidArgument(f"alias {alias!r} is malformed; {ALIAS_GRAMMAR}")
    return alias


def check_version_number(number: int, what: str = "version") -> int:
    if not 1 <= number <= MAX_VERSION:
        raise InvalidArgument(f"{what} must be a version number >= 1, got {number}")
    return number


def check_name_prefix(prefix: str) -> str:
    if len(prefix) > MAX_NAME_LENGTH or not _PREFIX_RE.fullmatch(prefix):
        raise InvalidArgument(f"name_prefix {prefix!r} cannot match any model; {NAME_GRAMMAR}")
    return prefix


def parse_ref(text: str) -> Ref:
    """Parse a reference string; InvalidArgument (quoting the grammar) when malformed."""
    if not text:
        raise InvalidArgument(f"reference is empty; {REF_GRAMMAR}")
    name, sep, selector = text.partition("@")
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(f"reference {text!r} has a malformed model name; {REF_GRAMMAR}")
    if not sep or selector == LATEST:
        return Ref(name)
    if _NUMBER_RE.fullmatch(selector):
        number = int(selector)
        if number > MAX_VERSION:
            raise InvalidArgument(
                f"reference {text!r}: version {number} is out of range (max {MAX_VERSION}); {REF_GRAMMAR}"
            )
        return Ref(name, version=number)
    if len(selector) <= MAX_ALIAS_LENGTH and _ALIAS_RE.fullmatch(selector) and selector.lower() != LATEST:
        return Ref(name, alias=selector)
    raise InvalidArgument(
        f"reference {text!r} has a malformed selector {selector!r} after '@'; expected "
        f'"latest", a version number >= 1 or an alias; {REF_GRAMMAR}'
    )
