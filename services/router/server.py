"""The router process: `cairn.v1.Inference` over gRPC and the OpenAI API over HTTP, one core behind both."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cairn.common.server import GrpcService
from cairn.services.tokenizer.client import TokenizerClient
from cairn.v1 import inference_pb2_grpc

from . import metrics
from .admission import AdmissionGate
from .auth import ApiKeys
from .config import RouterConfig
from .core import RouterCore
from .detokenizer import Detokenizer
from .grpc_server import SERVICE_NAME, InferenceServicer
from .http_app import create_app
from .http_server import HttpServer
from .rate_limit import RateLimiter
from .routing import RoutingTable

logger = logging.getLogger("cairn.router")


class RouterRuntime:
    """Everything of a router but the gRPC server: the core, its clients, and the HTTP server."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.table = RoutingTable(
            config.deployments,
            affinity_capacity=config.affinity_capacity,
            max_imbalance=config.affinity_max_imbalance,
            refresh_interval_s=config.refresh_interval_s,
            tokenizers=config.tokenizers,
        )
        self.tokenizer = TokenizerClient(config.tokenizer_address)
        self.detokenizer = Detokenizer(self.tokenizer)
        gate = AdmissionGate(config.max_running, config.max_queue, config.retry_after_s)
        metrics.RUNNING.set_function(lambda: gate.running)
        metrics.QUEUED.set_function(lambda: gate.waiting)
        self.core = RouterCore(
            self.table,
            self.tokenizer,
            self.detokenizer,
            keys=ApiKeys.load(config.api_keys_file, config.api_keys),
            limiter=RateLimiter(config.rate_limit_rpm, config.rate_limit_burst),
            gate=gate,
            request_timeout_s=config.request_timeout_s,
            system_fingerprint=config.system_fingerprint,
        )
        self.http: HttpServer | None = None
        self.serving = True

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    async def start(self) -> None:
        await self.table.start()
        if self.config.http_port >= 0:
            app = create_app(self.core, is_serving=lambda: self.serving)
            self.http = HttpServer(
                app,
                self.config.host,
                self.config.http_port,
                shutdown_grace_s=self.config.shutdown_grace_s,
                tls_cert=self.config.tls_cert,
                tls_key=self.config.tls_key,
            )
            port = await self.http.start()
            logger.info(
                "OpenAI-compatible HTTP API on http://%s:%d/v1",
                self.config.host,
                port,
                extra={"http_port": port},
            )

    async def close(self) -> None:
        self.serving = False
        if self.http is not None:
            await self.http.stop()
        await self.core.close()
        await self.detokenizer.close()
        await self.table.close()
        await self.tokenizer.close()

    def grpc_services(self) -> list[GrpcService]:
        return [
            GrpcService(
                SERVICE_NAME, InferenceServicer(self.core), inference_pb2_grpc.add_InferenceServicer_to_server
            )
        ]


@asynccontextmanager
async def router_services(config: RouterConfig) -> AsyncIterator[list[GrpcService]]:
    """The router for `cairn.common.server`; the HTTP API runs alongside until the drain is over."""
    runtime = RouterRuntime(config)
    try:
        await runtime.start()
        yield runtime.grpc_services()
    finally:
        await runtime.close()
