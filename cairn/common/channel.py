"""Client channels between cairn services.

`make_channel` returns a channel that forwards the current request id as
`x-request-id`, so a request keeps one id from the router down to the worker,
with keepalive and message limits that match `cairn.common.server`.
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal, NoReturn, Self, TypeVar, overload

import grpc
import grpc.aio

from cairn.common.errors import from_status
from cairn.common.request_id import REQUEST_ID_HEADER, request_id_var

# Round-robin over every address a name resolves to: a headless Kubernetes
# service then spreads calls over all replicas instead of pinning one.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def channel_options(max_message_mb: int = 64) -> list[tuple[str, Any]]:
    max_bytes = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.service_config", _SERVICE_CONFIG),
    ]


def _with_request_id(metadata: Any) -> tuple[tuple[str, Any], ...] | None:
    """`metadata` plus the bound request id, or None when there is nothing to add."""
    rid = request_id_var.get()
    pairs = tuple(metadata or ())
    if rid is None or any(key == REQUEST_ID_HEADER for key, _ in pairs):
        return None
    return (*pairs, (REQUEST_ID_HEADER, rid))


def _aio_details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    pairs = _with_request_id(details.metadata)
    if pairs is None:
        return details
    return details._replace(metadata=grpc.aio.Metadata.from_tuple(pairs))


# grpc.aio files each interceptor under the first call shape it implements, so
# covering all four shapes takes one object per shape.
class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_aio_details(client_call_details), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_aio_details(client_call_details), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, requests: Any) -> Any:
        return await continuation(_aio_details(client_call_details), requests)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, requests: Any
    ) -> Any:
        return await continuation(_aio_details(client_call_details), requests)


class _SyncCallDetails(
    namedtuple("_SyncCallDetails", "method timeout metadata credentials wait_for_ready compression"),
    grpc.ClientCallDetails,
):
    pass


class _SyncRequestIdInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    @staticmethod
    def _details(details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        pairs = _with_request_id(details.metadata)
        if pairs is None:
            return details
        return _SyncCallDetails(
            details.method,
            details.timeout,
            pairs,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation: Any, client_call_details: Any, requests: Any) -> Any:
        return continuation(self._details(client_call_details), requests)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, requests: Any) -> Any:
        return continuation(self._details(client_call_details), requests)


def _read(path: str | PathLike[str] | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


@overload
def make_channel(
    target: str,
    *,
    tls_ca: str | PathLike[str] | None = ...,
    tls_cert: str | PathLike[str] | None = ...,
    tls_key: str | PathLike[str] | None = ...,
    aio: Literal[True] = ...,
    max_message_mb: int = ...,
    options: Sequence[tuple[str, Any]] = ...,
) -> grpc.aio.Channel: ...


@overload
def make_channel(
    target: str,
    *,
    tls_ca: str | PathLike[str] | None = ...,
    tls_cert: str | PathLike[str] | None = ...,
    tls_key: str | PathLike[str] | None = ...,
    aio: Literal[False],
    max_message_mb: int = ...,
    options: Sequence[tuple[str, Any]] = ...,
) -> grpc.Channel: ...


def make_channel(
    target: str,
    *,
    tls_ca: str | PathLike[str] | None = None,
    tls_cert: str | PathLike[str] | None = None,
    tls_key: str | PathLike[str] | None = None,
    aio: bool = True,
    max_message_mb: int = 64,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel | grpc.Channel:
    """A channel to `target` ("host:port" or any gRPC name such as "dns:///tokenizer:50052").

    TLS is on when `tls_ca` is given; `tls_cert`/`tls_key` add a client
    certificate for servers that require mutual TLS. `options` override the defaults.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key must be given together")
    if tls_cert is not None and tls_ca is None:
        raise ValueError("a client certificate needs tls_ca as well")
    merged = dict(channel_options(max_message_mb))
    merged.update(options)
    opts = list(merged.items())
    credentials = (
        grpc.ssl_channel_credentials(_read(tls_ca), _read(tls_key), _read(tls_cert))
        if tls_ca is not None
        else None
    )
    if aio:
        interceptors = [_AioUnaryUnary(), _AioUnaryStream(), _AioStreamUnary(), _AioStreamStream()]
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
        return grpc.aio.secure_channel(target, credentials, options=opts, interceptors=interceptors)
    channel = (
        grpc.insecure_channel(target, options=opts)
        if credentials is None
        else grpc.secure_channel(target, credentials, options=opts)
    )
    return grpc.intercept_channel(channel, _SyncRequestIdInterceptor())


def raise_for_rpc_error(error: grpc.RpcError) -> NoReturn:
    """Re-raise a failed call as the typed CairnError for its status (`except grpc.RpcError as e: ...`)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    raise from_status(code, details or code.name) from error


T = TypeVar("T")


class BlockingClient:
    """What every blocking service client shares: its target, a per-call timeout, a channel that is
    closed on `close()` or leaving a `with` block, and `_call`, which raises the typed CairnError
    of a failed call. Subclasses open `self._channel` with `make_channel` and build their stub."""

    target: str
    timeout: float
    _channel: grpc.Channel

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise_for_rpc_error(e)
