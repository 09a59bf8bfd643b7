"""The embedded HTTP server: connections without Nagle (streamed chunks go out at once)."""

from __future__ import annotations

import asyncio
import socket

import httpx2 as httpx
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from cairn.services.router.http_server import HttpServer


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("hi")(scope, receive, send)


def test_accepted_connections_have_tcp_nodelay() -> None:
    async def scenario() -> int:
        server = HttpServer(hello, "127.0.0.1", 0)
        port = await server.start()
        try:
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"http://127.0.0.1:{port}/")).text == "hi"
                # The keep-alive connection is still open: look at the server's end of it.
                [connection] = server._server.server_state.connections
                sock = connection.transport.get_extra_info("socket")
                return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            await server.stop()

    assert asyncio.run(scenario()) != 0


def test_a_taken_port_is_named() -> None:
    async def scenario() -> None:
        first = HttpServer(hello, "127.0.0.1", 0)
        port = await first.start()
        try:
            second = HttpServer(hello, "127.0.0.1", port)
            try:
                await second.start()
            except OSError as error:
                assert f"127.0.0.1:{port}" in str(error)
            else:
                await second.stop()
                raise AssertionError("a second server bound a port that was taken")
        finally:
            await first.stop()

    asyncio.run(scenario())
