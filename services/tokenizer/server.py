"""The `cairn.v1.Tokenizer` gRPC servicer: messages in, `TokenizerCore` calls on threads, messages out.

Tokenization is CPU work (the Rust parts release the GIL), so it runs on a
thread pool and the event loop stays free for other calls and health checks.
Loading a model that is not cached (a registry pull, seconds) runs on a pool of
its own first, so requests for loaded models never queue behind a load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from cairn.common.server import GrpcService, run_service
from cairn.services.registry.client import RegistryClient
from cairn.v1 import tokenizer_pb2, tokenizer_pb2_grpc

from . import convert
from .config import TokenizerConfig
from .core import TokenizerCore
from .loader import TokenizerLoader

SERVICE_NAME = tokenizer_pb2.DESCRIPTOR.services_by_name["Tokenizer"].full_name
LOAD_THREADS = 4

R = TypeVar("R")


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServicer):
    def __init__(self, core: TokenizerCore, *, threads: int) -> None:
        self._core = core
        self._work = concurrent.futures.ThreadPoolExecutor(threads, "tokenizer-work")
        self._loads = concurrent.futures.ThreadPoolExecutor(LOAD_THREADS, "tokenizer-load")

    def close(self) -> None:
        self._work.shutdown(wait=True, cancel_futures=True)
        self._loads.shutdown(wait=True, cancel_futures=True)

    async def _run(self, refs: Iterable[str], fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        loop = asyncio.get_running_loop()
        loader = self._core.loader
        for ref in dict.fromkeys(refs):
            if loader.peek(ref) is None:
                loads = loader.loads
                await loop.run_in_executor(self._loads, loader.get, ref)
                if loader.loads != loads:
                    freeze_long_lived_objects()
        return await loop.run_in_executor(self._work, functools.partial(fn, *args, **kwargs))

    async def Encode(
        self, request: tokenizer_pb2.EncodeRequest, context: Any
    ) -> tokenizer_pb2.EncodeResponse:
        return await self._run([request.model.ref], self._encode, request)

    def _encode(self, request: tokenizer_pb2.EncodeRequest) -> tokenizer_pb2.EncodeResponse:
        encodings = self._core.encode(
            request.model.ref,
            convert.inputs_from_proto(request.inputs),
            add_special_tokens=request.add_special_tokens if request.HasField("add_special_tokens") else True,
            max_length=request.max_length,
            truncation_side=convert.truncation_side_from_proto(request.truncation_side),
        )
        return tokenizer_pb2.EncodeResponse(encodings=[convert.encoding_to_proto(e) for e in encodings])

    async def Decode(
        self, request: tokenizer_pb2.DecodeRequest, context: Any
    ) -> tokenizer_pb2.DecodeResponse:
        return await self._run([request.model.ref], self._decode, request)

    def _decode(self, request: tokenizer_pb2.DecodeRequest) -> tokenizer_pb2.DecodeResponse:
        text = self._core.decode(
            request.model.ref, request.token_ids, skip_special_tokens=request.skip_special_tokens
        )
        return tokenizer_pb2.DecodeResponse(text=text)

    async def DetokenizeBatch(
        self, request: tokenizer_pb2.DetokenizeBatchRequest, context: Any
    ) -> tokenizer_pb2.DetokenizeBatchResponse:
        return await self._run([s.model.ref for s in request.streams], self._detokenize_batch, request)

    def _detokenize_batch(
        self, request: tokenizer_pb2.DetokenizeBatchRequest
    ) -> tokenizer_pb2.DetokenizeBatchResponse:
        results = self._core.detokenize_batch([convert.step_from_proto(s) for s in request.streams])
        return tokenizer_pb2.DetokenizeBatchResponse(results=[convert.result_to_proto(r) for r in results])

    async def GetTokenizerInfo(
        self, request: tokenizer_pb2.TokenizerInfoRequest, context: Any
    ) -> tokenizer_pb2.TokenizerInfo:
        info = await self._run([request.model.ref], self._core.info, request.model.ref)
        return convert.info_to_proto(info)


def freeze_long_lived_objects() -> None:
    """Move every object alive now out of the cyclic GC's reach.

    A loaded tokenizer brings transformers (and torch) with it: millions of
    long-lived objects that each full collection would walk again, which
    otherwise costs a DetokenizeBatch of a thousand streams more than its work.
    """
    gc.freeze()


def open_core(config: TokenizerConfig) -> TokenizerCore:
    registry = RegistryClient(config.registry_address) if config.registry_address else None
    loader = TokenizerLoader(
        registry=registry,
        cache_dir=config.cache_dir.expanduser(),
        max_cached=config.max_cached_tokenizers,
        resolve_ttl_s=config.resolve_ttl_s,
        allow_local_dirs=config.allow_local_dirs,
    )
    return TokenizerCore(loader, allow_request_chat_template=config.allow_request_chat_template)


@asynccontextmanager
async def tokenizer_services(config: TokenizerConfig) -> AsyncIterator[list[GrpcService]]:
    """The tokenizer service for `cairn.common.server`, with `config.preload` loaded before it serves."""
    core = open_core(config)
    servicer = TokenizerServicer(core, threads=config.threads)
    try:
        for ref in config.preload:
            await asyncio.to_thread(core.loader.get, ref)
        freeze_long_lived_objects()
        yield [GrpcService(SERVICE_NAME, servicer, tokenizer_pb2_grpc.add_TokenizerServicer_to_server)]
    finally:
        servicer.close()
        core.loader.close()


def serve(config: TokenizerConfig) -> int:
    """Run the tokenizer service until SIGTERM/SIGINT; the process exit code."""
    return run_service(config, tokenizer_services)
