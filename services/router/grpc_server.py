"""The `cairn.v1.Inference` servicer: metadata and messages in, `RouterCore` calls, messages out.

The API key comes from the `authorization` metadata ("Bearer KEY"), the
deadline from the call's own. A client that cancels or disconnects cancels
the handler's task, and with it the scheduler call (see `generation`).
RESOURCE_EXHAUSTED (the router's or a scheduler's) carries the seconds to wait
in the `retry-after` trailer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc.aio

from cairn.common.errors import ResourceExhausted
from cairn.v1 import inference_pb2, inference_pb2_grpc

from . import convert
from .admission import RetryLater
from .core import RouterCore

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


@asynccontextmanager
async def _retry_hint(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    try:
        yield
    except ResourceExhausted as e:
        hint = e.retry_after_header if isinstance(e, RetryLater) else "1"
        context.set_trailing_metadata((("retry-after", hint),))
        raise


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, core: RouterCore) -> None:
        self._core = core

    def _begin(self, context: grpc.aio.ServicerContext) -> float:
        """Authorize the caller; the request's deadline."""
        metadata = dict(context.invocation_metadata() or ())
        self._core.authorize(metadata.get("authorization"))
        return self._core.deadline(context.time_remaining())

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GenerateResponse:
        async with _retry_hint(context):
            deadline = self._begin(context)
            async with self._core.generate(request, deadline=deadline) as generation:
                seqs = await generation.collect()
                fingerprint = self._core.fingerprint(generation.spec.target)
                return convert.generate_response(generation, seqs, fingerprint)

    async def GenerateStream(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        async with _retry_hint(context):
            deadline = self._begin(context)
            async with self._core.generate(request, deadline=deadline, stream=True) as generation:
                spec = generation.spec
                if spec.echo:
                    yield inference_pb2.GenerateStreamResponse(
                        id=spec.request_id,
                        model=spec.target.name,
                        deltas=[
                            inference_pb2.CompletionDelta(index=i, text=spec.echo_text) for i in range(spec.n)
                        ],
                    )
                async for chunks in generation.steps():
                    yield convert.generate_stream_response(generation, chunks)
                yield inference_pb2.GenerateStreamResponse(
                    id=spec.request_id, model=spec.target.name, usage=convert.usage_to_proto(generation.usage)
                )

    async def Chat(
        self, request: inference_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ChatResponse:
        async with _retry_hint(context):
            deadline = self._begin(context)
            async with self._core.chat(request, deadline=deadline) as chat:
                results = await chat.collect()
                fingerprint = self._core.fingerprint(chat.generation.spec.target)
                return convert.chat_response(chat.generation, results, fingerprint)

    async def ChatStream(
        self, request: inference_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.ChatStreamResponse]:
        async with _retry_hint(context):
            deadline = self._begin(context)
            async with self._core.chat(request, deadline=deadline, stream=True) as chat:
                async for chunks in chat.steps():
                    yield convert.chat_stream_response(chat.generation, chunks)
                spec = chat.generation.spec
                yield inference_pb2.ChatStreamResponse(
                    id=spec.request_id, model=spec.target.name, usage=convert.usage_to_proto(chat.usage)
                )

    async def Tokenize(
        self, request: inference_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.TokenizeResponse:
        async with _retry_hint(context):
            deadline = self._begin(context)
            return convert.tokenize_response(await self._core.tokenize(request, deadline=deadline))

    async def ListModels(
        self, request: inference_pb2.ListServedModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListServedModelsResponse:
        async with _retry_hint(context):
            self._begin(context)
            return convert.models_response(self._core.list_models())
