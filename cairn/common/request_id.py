"""The request id that follows one request through every service.

The server runtime binds it per RPC (from the caller's `x-request-id` metadata or
a fresh one), log lines pick it up, and client channels forward it, so one id
ties together the router, tokenizer, scheduler and worker lines of a request.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

REQUEST_ID_HEADER = "x-request-id"

# Ids arrive from untrusted callers and end up in every log line and metric
# exemplar, so anything long or unprintable is replaced rather than trusted.
_MAX_LENGTH = 128

request_id_var: ContextVar[str | None] = ContextVar("cairn_request_id", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return request_id_var.get()


def accept_request_id(value: str | None) -> str | None:
    """`value` if it is safe to log and forward, else None (the caller then makes a fresh id)."""
    if not value or len(value) > _MAX_LENGTH:
        return None
    if not all("!" <= ch <= "~" for ch in value):
        return None
    return value


@contextmanager
def request_context(request_id: str | None = None) -> Iterator[str]:
    """Bind a request id for work that runs outside an RPC handler (background loops, tests)."""
    bound = request_id or new_request_id()
    token = request_id_var.set(bound)
    try:
        yield bound
    finally:
        request_id_var.reset(token)
