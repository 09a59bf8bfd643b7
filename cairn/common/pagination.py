"""Opaque keyset page tokens.

A token carries the sort key of the last item served plus a fingerprint of the
query it belongs to, so the next page starts strictly after that key (no
duplicates or misses when rows are added meanwhile, no OFFSET scans) and a
token replayed against a different query is refused instead of silently
skipping rows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from cairn.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def effective_page_size(requested: int) -> int:
    """0 means the default; above the maximum is capped (AIP-158), negatives are refused."""
    if requested < 0:
        raise InvalidArgument(f"page_size must be >= 0, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fingerprint(query: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]


def encode_token(query: dict[str, Any], after: int) -> str:
    raw = json.dumps({"q": _fingerprint(query), "after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, query: dict[str, Any]) -> int | None:
    """The key to start after, or None for the first page."""
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        fingerprint, after = body["q"], body["after"]
    except (ValueError, binascii.Error, KeyError, TypeError):
        raise InvalidArgument(
            "page_token is not valid; pass the next_page_token of the previous response unchanged"
        ) from None
    if fingerprint != _fingerprint(query) or not isinstance(after, int):
        raise InvalidArgument(
            "page_token belongs to a different query; keep the other request fields unchanged while paging"
        )
    return after
