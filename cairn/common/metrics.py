"""Prometheus metrics: per-RPC counters and latency, and the HTTP endpoint that exposes them.

Everything registers on prometheus_client's default registry, so a service adds
its own metrics with plain `Counter(...)`/`Histogram(...)` at module level and
they appear on the same `/metrics` page.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
import grpc.aio
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, make_wsgi_app

# Streams (token generation, job progress) run for minutes, so buckets reach far.
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

RPC_REQUESTS = Counter(
    "cairn_grpc_requests", "Finished gRPC calls by status code.", ["service", "method", "code"]
)
RPC_DURATION = Histogram(
    "cairn_grpc_request_duration_seconds",
    "gRPC call duration, from handler start to last response.",
    ["service", "method"],
    buckets=_DURATION_BUCKETS,
)
RPC_ERRORS = Counter(
    "cairn_grpc_errors", "gRPC calls that ended with a non-OK status.", ["service", "method", "code"]
)


@functools.lru_cache(maxsize=1024)
def split_method(method: str) -> tuple[str, str]:
    """'/cairn.v1.Registry/GetModel' -> ('cairn.v1.Registry', 'GetModel')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _status_name(context: grpc.aio.ServicerContext, default: grpc.StatusCode) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return default.name


@asynccontextmanager
async def record_rpc(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Call scope that counts the call and its latency under the status it ended with."""
    service, name = split_method(method)
    start = time.perf_counter()
    code = grpc.StatusCode.UNKNOWN.name
    try:
        yield
        code = _status_name(context, grpc.StatusCode.OK)
    except grpc.aio.AbortError:
        code = _status_name(context, grpc.StatusCode.UNKNOWN)
        raise
    except (asyncio.CancelledError, GeneratorExit):
        code = grpc.StatusCode.CANCELLED.name
        raise
    finally:
        RPC_DURATION.labels(service, name).observe(time.perf_counter() - start)
        RPC_REQUESTS.labels(service, name, code).inc()
        if code != grpc.StatusCode.OK.name:
            RPC_ERRORS.labels(service, name, code).inc()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServerV6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the service's own logs."""


def _app(registry: CollectorRegistry, is_serving: Callable[[], bool]) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            ok = is_serving()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"shutting down\n"]
        if path in ("/", "/metrics"):
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found; try /metrics or /healthz\n"]

    return app


class MetricsServer:
    """`/metrics` (Prometheus text) and `/healthz` (200 while serving, 503 once draining) over HTTP."""

    def __init__(
        self, host: str, port: int, is_serving: Callable[[], bool], registry: CollectorRegistry = REGISTRY
    ) -> None:
        server_class = _ThreadingWSGIServerV6 if ":" in host else _ThreadingWSGIServer
        try:
            self._httpd = make_server(
                host, port, _app(registry, is_serving), server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise OSError(f"cannot bind the metrics server to {host}:{port}: {exc.strerror}") from None
        self.port: int = self._httpd.server_address[1]
        # serve_forever polls for shutdown; a short interval keeps process exit quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="cairn-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
