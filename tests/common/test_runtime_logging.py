"""Log formatting: one JSON object per line with service, request id and extra fields, or readable text."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.common.logging import ContextFilter, JsonFormatter, TextFormatter
from cairn.common.request_id import request_context


@pytest.fixture
def stream_logger() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A private logger so these tests neither see nor disturb the process-wide setup."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter("tokenizer"))
    logger = logging.getLogger("cairn.test.logging")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_line_has_the_standard_fields_and_extras(stream_logger) -> None:
    logger, stream, handler = stream_logger
    handler.setFormatter(JsonFormatter())
    with request_context("rid-1"):
        logger.info("encoded %d tokens", 12, extra={"model": "tiny", "path": Path("/m")})
    logger.warning("no request")

    first, second = (json.loads(line) for line in lines(stream))
    assert first["msg"] == "encoded 12 tokens"
    assert first["level"] == "INFO"
    assert first["logger"] == "cairn.test.logging"
    assert first["service"] == "tokenizer"
    assert first["request_id"] == "rid-1"
    assert first["model"] == "tiny"
    assert first["path"] == "/m"
    assert first["ts"].endswith("Z")
    assert second["request_id"] is None
    assert second["level"] == "WARNING"
    assert set(first) == {"ts", "level", "logger", "msg", "service", "request_id", "model", "path"}


def test_json_line_carries_the_traceback_on_one_line(stream_logger) -> None:
    logger, stream, handler = stream_logger
    handler.setFormatter(JsonFormatter())
    try:
        raise ValueError("bad shape\nsecond line")
    except ValueError:
        logger.exception("failed")
    (line,) = lines(stream)
    record = json.loads(line)
    assert record["msg"] == "failed"
    assert "ValueError: bad shape" in record["exc"]


def test_explicit_request_id_extra_wins_over_the_context(stream_logger) -> None:
    logger, stream, handler = stream_logger
    handler.setFormatter(JsonFormatter())
    with request_context("ambient"):
        logger.info("background", extra={"request_id": "explicit"})
    assert json.loads(lines(stream)[0])["request_id"] == "explicit"


def test_text_format_is_readable(stream_logger) -> None:
    logger, stream, handler = stream_logger
    handler.setFormatter(TextFormatter())
    with request_context("rid-2"):
        logger.info("hello", extra={"tokens": 3})
    (line,) = lines(stream)
    assert "INFO" in line
    assert "cairn.test.logging [rid-2]: hello tokens=3" in line
