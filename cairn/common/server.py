"""gRPC server bootstrap shared by every cairn service.

`start_server` binds a `grpc.aio` server with the standard health and reflection
services, per-call request ids, metrics and error mapping; `serve` runs it until
SIGTERM/SIGINT and drains it; `run_service` is the whole lifecycle for a CLI and
`add_serve_command` the `cairn <service> serve` subcommand around it.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cairn.common.config import ConfigError, ServiceConfig, add_config_arguments, config_from_args
from cairn.common.interceptors import ScopeInterceptor, bind_request_id, map_errors
from cairn.common.logging import configure_logging
from cairn.common.metrics import MetricsServer, record_rpc

logger = logging.getLogger("cairn.server")

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

C = TypeVar("C", bound=ServiceConfig)
ShutdownHook = Callable[[], Awaitable[None] | None]


@dataclass(frozen=True)
class GrpcService:
    """One gRPC service to host: `add_to_server` is the generated `add_<Name>Servicer_to_server`.

    Servicer methods must be `async def`: coroutines, or async generators for streamed responses.
    """

    name: str
    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]


BuiltServices = (
    Sequence[GrpcService]
    | Awaitable[Sequence[GrpcService]]
    | AbstractAsyncContextManager[Sequence[GrpcService]]
)


def server_options(config: ServiceConfig) -> list[tuple[str, Any]]:
    max_bytes = config.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
        # Without this a second server on the same port binds silently and
        # steals half the connections instead of failing.
        ("grpc.so_reuseport", 0),
        # Ping idle clients so a vanished caller is noticed and its request
        # aborted (freeing KV blocks) instead of lingering until TCP gives up.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # Accept the client keepalive that cairn.common.channel configures.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def _bind_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _server_credentials(config: ServiceConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    chain = config.tls_cert.read_bytes()
    key = config.tls_key.read_bytes()
    client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


@dataclass
class RunningServer:
    """A started server. `port` is the bound port (useful when the config asked for 0)."""

    server: grpc.aio.Server
    port: int
    health: grpc_health.aio.HealthServicer
    service_names: list[str]
    metrics: MetricsServer | None = None
    serving: bool = field(default=True)

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port if self.metrics else None

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, give in-flight calls `grace` seconds, cancel the rest."""
        self.serving = False
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
            self.metrics = None


async def start_server(config: ServiceConfig, services: Sequence[GrpcService]) -> RunningServer:
    server = grpc.aio.server(
        interceptors=[ScopeInterceptor([bind_request_id, record_rpc, map_errors])],
        options=server_options(config),
    )
    for service in services:
        service.add_to_server(service.servicer, server)
    health_servicer = grpc_health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.name for s in services]
    reflection.enable_server_reflection([*names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)

    address = _bind_address(config.host, config.port)
    credentials = _server_credentials(config)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"cannot bind the gRPC server to {address}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    await server.start()

    running = RunningServer(server=server, port=port, health=health_servicer, service_names=names)
    try:
        for name in ["", *names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if config.metrics_port:
            running.metrics = MetricsServer(config.host, config.metrics_port, lambda: running.serving)
    except BaseException:
        await server.stop(None)
        raise
    logger.info(
        "serving %s on %s",
        ", ".join(names) or "no services",
        _bind_address(config.host, port),
        extra={"port": port, "metrics_port": running.metrics_port, "tls": credentials is not None},
    )
    return running


async def _run_hooks(hooks: Iterable[ShutdownHook]) -> None:
    for hook in hooks:
        try:
            result = hook()
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("shutdown hook %r failed", hook)


async def serve(
    config: ServiceConfig, services: Sequence[GrpcService], on_shutdown: Iterable[ShutdownHook] | None = None
) -> None:
    """Serve until SIGTERM/SIGINT, then drain for `shutdown_grace_s`; a second signal cuts the drain short."""
    loop = asyncio.get_running_loop()
    signals = asyncio.Queue[signal.Signals]()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    try:
        running = await start_server(config, services)
        received = await signals.get()
        logger.info("received %s, draining for up to %ss", received.name, config.shutdown_grace_s)
        drain = asyncio.ensure_future(running.stop(config.shutdown_grace_s))
        second = asyncio.ensure_future(signals.get())
        done, _ = await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
        if second in done:
            logger.warning("received %s again, cancelling in-flight calls", second.result().name)
            await running.server.stop(None)
            await drain
        else:
            second.cancel()
        await _run_hooks(on_shutdown or ())
        logger.info("stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _build_and_serve(config: C, build_services: Callable[[C], BuiltServices]) -> None:
    built = build_services(config)
    if isinstance(built, AbstractAsyncContextManager):
        async with built as services:
            await serve(config, services)
        return
    services = await built if inspect.isawaitable(built) else built
    await serve(config, services)


def run_service(config: C, build_services: Callable[[C], BuiltServices]) -> int:
    """The whole lifecycle for a CLI: logging, build, serve, drain. Returns the process exit code.

    `build_services(config)` runs inside the event loop and returns the services,
    an awaitable of them, or an async context manager yielding them (its exit
    runs after the drain: the place to close databases and channels).
    """
    configure_logging(config.service_name, config.log_level, config.log_format)
    try:
        asyncio.run(_build_and_serve(config, build_services))
    except Exception:
        logger.exception("%s failed", config.service_name)
        return 1
    return 0


def add_serve_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    schema: type[C],
    build_services: Callable[[C], BuiltServices],
    name: str = "serve",
) -> argparse.ArgumentParser:
    """Add a subcommand that loads `schema` from flags/env/YAML and runs the service.

    The handler is stored as `func`, the convention of `cairn.cli`; a bad config
    exits with status 2 and the ConfigError message instead of a traceback.
    """
    parser = subparsers.add_parser(name, help=f"run the {schema.service_name} gRPC server")
    add_config_arguments(parser, schema)

    def handler(args: argparse.Namespace) -> int:
        try:
            config = config_from_args(schema, args)
        except ConfigError as err:
            parser.exit(2, f"{parser.prog}: {err}\n")
        return run_service(config, build_services)

    parser.set_defaults(func=handler)
    return parser
