"""A test-only gRPC service with raw-bytes messages, covering all four call shapes.

The cairn protos are not needed to exercise the runtime: generic handlers with
identity serializers give real HTTP/2 calls through every interceptor.
Requests steer behaviour: b"notfound" raises NotFound, b"boom" a plain
exception, b"wait:<path>" blocks until <path> exists, b"forward:<target>"
calls Echo on another server through `make_channel`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio

from cairn.common.channel import make_channel
from cairn.common.config import ServiceConfig
from cairn.common.errors import NotFound
from cairn.common.server import GrpcService

SERVICE = "cairn.test.Echo"


class EchoConfig(ServiceConfig):
    service_name = "echo"


logger = logging.getLogger("cairn.test.echo")


async def _react(request: bytes) -> bytes:
    if request == b"notfound":
        raise NotFound("no such thing: notfound")
    if request == b"boom":
        raise RuntimeError("kaboom")
    if request.startswith(b"wait:"):
        path = Path(request[len(b"wait:") :].decode())
        logger.info("waiting", extra={"path": str(path)})
        while not path.exists():
            await asyncio.sleep(0.01)
        return b"released"
    if request.startswith(b"forward:"):
        target = request[len(b"forward:") :].decode()
        async with make_channel(target) as channel:
            return await channel.unary_unary(f"/{SERVICE}/Echo")(b"forwarded")
    return request


class EchoServicer:
    async def Echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        logger.info("echo", extra={"size": len(request)})
        return await _react(request)

    async def Count(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Streams b"0", b"1", ... up to int(request); b"<n>!" fails after n items."""
        text = request.decode()
        fail = text.endswith("!")
        for i in range(int(text.rstrip("!"))):
            yield str(i).encode()
        if fail:
            raise NotFound("ran out of numbers")

    async def Join(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        parts = [part async for part in request_iterator]
        if b"boom" in parts:
            raise RuntimeError("bad part")
        return b"".join(parts)

    async def Chat(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for part in request_iterator:
            yield await _react(part)


def _add_to_server(servicer: EchoServicer, server: grpc.aio.Server) -> None:
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(servicer.Echo),
        "Count": grpc.unary_stream_rpc_method_handler(servicer.Count),
        "Join": grpc.stream_unary_rpc_method_handler(servicer.Join),
        "Chat": grpc.stream_stream_rpc_method_handler(servicer.Chat),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def echo_service() -> GrpcService:
    return GrpcService(SERVICE, EchoServicer(), _add_to_server)
