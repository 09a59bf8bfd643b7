"""The `cairn.v1.Registry` gRPC servicer: messages in, `core.Registry` calls, messages out.

The runtime is grpc.aio; the registry core is blocking (SQL, fsspec), so every
call runs on a thread. Metadata calls share a small pool; uploads and downloads,
which hold a thread for as long as the client streams, get their own, so a few
slow transfers never starve the quick calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, TypeVar

from prometheus_client import Counter

from cairn.common.errors import Cancelled, InvalidArgument
from cairn.common.server import GrpcService, run_service
from cairn.v1 import registry_pb2, registry_pb2_grpc

from . import convert
from .config import RegistryConfig
from .core import Registry

logger = logging.getLogger("cairn.registry")

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name
METADATA_THREADS = 16
# How often a transfer thread waiting on the network checks whether its call was cancelled.
_CANCEL_POLL_S = 0.5

R = TypeVar("R")

UPLOADED_BYTES = Counter("cairn_registry_uploaded_bytes", "Artifact bytes received, verified and stored.")
DOWNLOADED_BYTES = Counter("cairn_registry_downloaded_bytes", "Artifact bytes streamed to clients.")


def open_registry(config: RegistryConfig) -> Registry:
    return Registry.open(
        config.database(),
        config.blobs(),
        storage_options=config.blob_storage_options,
        chunk_size=config.chunk_size,
    )


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, registry: Registry, *, max_transfers: int = 64) -> None:
        self._registry = registry
        self._calls = concurrent.futures.ThreadPoolExecutor(METADATA_THREADS, "registry-call")
        self._transfers = concurrent.futures.ThreadPoolExecutor(max_transfers, "registry-transfer")

    def close(self) -> None:
        self._calls.shutdown(wait=True, cancel_futures=True)
        self._transfers.shutdown(wait=True, cancel_futures=True)

    async def _run(
        self, pool: concurrent.futures.Executor, fn: Callable[..., R], *args: Any, **kwargs: Any
    ) -> R:
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args, **kwargs))

    async def CreateModel(self, request: registry_pb2.CreateModelRequest, context: Any) -> registry_pb2.Model:
        model = await self._run(
            self._calls,
            self._registry.create_model,
            request.name,
            description=request.description,
            labels=dict(request.labels),
        )
        return convert.model_to_proto(model)

    async def GetModel(self, request: registry_pb2.GetModelRequest, context: Any) -> registry_pb2.Model:
        return convert.model_to_proto(await self._run(self._calls, self._registry.get_model, request.name))

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: Any
    ) -> registry_pb2.ListModelsResponse:
        page = await self._run(
            self._calls,
            self._registry.list_models,
            page_size=request.page_size,
            page_token=request.page_token,
            name_prefix=request.name_prefix,
        )
        return registry_pb2.ListModelsResponse(
            models=[convert.model_to_proto(m) for m in page.items], next_page_token=page.next_page_token
        )

    async def CreateVersion(
        self, request: registry_pb2.CreateVersionRequest, context: Any
    ) -> registry_pb2.Version:
        version = await self._run(
            self._calls,
            self._registry.create_version,
            request.model,
            format=request.format,
            parents=[p.ref for p in request.parents],
            recipe=convert.recipe_from_struct(request.recipe),
            description=request.description,
            labels=dict(request.labels),
            create_model=request.create_model,
        )
        return convert.version_to_proto(version)

    async def UploadArtifact(
        self, request_iterator: AsyncIterator[registry_pb2.UploadArtifactRequest], context: Any
    ) -> registry_pb2.Artifact:
        first = await anext(request_iterator, None)
        if first is None:
            raise InvalidArgument(
                "the upload stream was empty; send an UploadArtifactHeader (model, version, path, size, "
                "sha256) first, then the chunks"
            )
        if first.WhichOneof("payload") != "header":
            raise InvalidArgument(
                "the first UploadArtifact message must be the header (model, version, path, size, sha256); "
                "got a chunk before it"
            )
        header = first.header
        cancelled = threading.Event()
        chunks = _chunks_from(request_iterator, asyncio.get_running_loop(), cancelled)
        try:
            artifact = await self._run(
                self._transfers,
                self._registry.upload_artifact,
                header.model,
                header.version,
                header.path,
                size=header.size,
                sha256=header.sha256,
                chunks=chunks,
            )
        except asyncio.CancelledError:
            cancelled.set()
            raise
        UPLOADED_BYTES.inc(artifact.size)
        return convert.artifact_to_proto(artifact)

    async def FinalizeVersion(
        self, request: registry_pb2.FinalizeVersionRequest, context: Any
    ) -> registry_pb2.Version:
        version = await self._run(
            self._calls,
            self._registry.finalize_version,
            request.model,
            request.version,
            aliases=list(request.aliases),
        )
        return convert.version_to_proto(version)

    async def GetVersion(self, request: registry_pb2.GetVersionRequest, context: Any) -> registry_pb2.Version:
        return convert.version_to_proto(
            await self._run(self._calls, self._registry.get_version, request.ref.ref)
        )

    async def ListVersions(
        self, request: registry_pb2.ListVersionsRequest, context: Any
    ) -> registry_pb2.ListVersionsResponse:
        page = await self._run(
            self._calls,
            self._registry.list_versions,
            request.model,
            page_size=request.page_size,
            page_token=request.page_token,
            include_drafts=request.include_drafts,
            include_deleted=request.include_deleted,
        )
        return registry_pb2.ListVersionsResponse(
            versions=[convert.version_to_proto(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def DeleteVersion(
        self, request: registry_pb2.DeleteVersionRequest, context: Any
    ) -> registry_pb2.Version:
        return convert.version_to_proto(
            await self._run(self._calls, self._registry.delete_version, request.ref.ref)
        )

    async def DownloadArtifact(
        self, request: registry_pb2.DownloadArtifactRequest, context: Any
    ) -> AsyncIterator[registry_pb2.DownloadArtifactResponse]:
        artifact, chunks = await self._run(
            self._calls,
            self._registry.download_artifact,
            request.ref.ref,
            request.path,
            offset=request.offset,
        )
        try:
            yield registry_pb2.DownloadArtifactResponse(header=convert.artifact_to_proto(artifact))
            while (chunk := await self._run(self._transfers, next, chunks, None)) is not None:
                yield registry_pb2.DownloadArtifactResponse(chunk=chunk)
                DOWNLOADED_BYTES.inc(len(chunk))
        finally:
            chunks.close()

    async def SetAlias(self, request: registry_pb2.SetAliasRequest, context: Any) -> registry_pb2.Alias:
        alias = await self._run(
            self._calls, self._registry.set_alias, request.model, request.alias, request.version
        )
        return convert.alias_to_proto(alias)

    async def DeleteAlias(
        self, request: registry_pb2.DeleteAliasRequest, context: Any
    ) -> registry_pb2.DeleteAliasResponse:
        number = await self._run(self._calls, self._registry.delete_alias, request.model, request.alias)
        return registry_pb2.DeleteAliasResponse(version=number)

    async def GetLineage(self, request: registry_pb2.GetLineageRequest, context: Any) -> registry_pb2.Lineage:
        lineage = await self._run(
            self._calls, self._registry.get_lineage, request.ref.ref, depth=request.depth
        )
        return convert.lineage_to_proto(lineage)


def _chunks_from(
    requests: AsyncIterator[registry_pb2.UploadArtifactRequest],
    loop: asyncio.AbstractEventLoop,
    cancelled: threading.Event,
) -> Iterator[bytes]:
    """The rest of an upload stream as a blocking iterator, for the transfer thread.

    Each message is read on the event loop; the thread gives up (Cancelled, so
    the partial upload is discarded) once the call is cancelled.
    """
    while True:
        future = asyncio.run_coroutine_threadsafe(_next_chunk(requests), loop)
        while True:
            try:
                chunk = future.result(timeout=_CANCEL_POLL_S)
                break
            except concurrent.futures.TimeoutError:
                if cancelled.is_set():
                    future.cancel()
                    raise Cancelled("the upload was cancelled by the client; nothing was stored") from None
            except concurrent.futures.CancelledError:
                raise Cancelled("the upload was cancelled by the client; nothing was stored") from None
        if chunk is None:
            return
        yield chunk


async def _next_chunk(requests: AsyncIterator[registry_pb2.UploadArtifactRequest]) -> bytes | None:
    message = await anext(requests, None)
    if message is None:
        return None
    if message.WhichOneof("payload") != "chunk":
        raise InvalidArgument("an UploadArtifact stream has one header, first; a second header arrived")
    return message.chunk


@asynccontextmanager
async def registry_services(config: RegistryConfig) -> AsyncIterator[list[GrpcService]]:
    """The registry service for `cairn.common.server`; closes the database and threads on exit."""
    registry = await asyncio.to_thread(open_registry, config)
    servicer = RegistryServicer(registry, max_transfers=config.max_transfers)
    try:
        stale = timedelta(hours=config.stale_upload_hours)
        removed = await asyncio.to_thread(registry.blobs.remove_stale_uploads, stale)
        if removed:
            logger.info("removed %d upload(s) abandoned before a restart", len(removed))
        yield [GrpcService(SERVICE_NAME, servicer, registry_pb2_grpc.add_RegistryServicer_to_server)]
    finally:
        # Off the loop: a transfer thread may still need the loop to notice its call was cancelled.
        await asyncio.to_thread(servicer.close)
        registry.close()


def serve(config: RegistryConfig) -> int:
    """Run the registry until SIGTERM/SIGINT; the process exit code."""
    return run_service(config, registry_services)
