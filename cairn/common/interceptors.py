"""Per-call scopes around every servicer method: request id binding and error mapping.

A scope is an async context manager entered around one call. `ScopeInterceptor`
wraps each handler once with all scopes, keeping the handler's shape: a
coroutine stays a coroutine (including `context.write` style streaming) and an
async generator stays a generator, so for streams the scopes stay open, and
errors are mapped, during iteration.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
import grpc.aio

from cairn.common.errors import CairnError
from cairn.common.request_id import REQUEST_ID_HEADER, accept_request_id, new_request_id, request_id_var

logger = logging.getLogger("cairn.rpc")

CallScope = Callable[[str, grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]

# (request_streaming, response_streaming) -> the handler attribute and its constructor.
_HANDLER_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


class ScopeInterceptor(grpc.aio.ServerInterceptor):
    """Enters `scopes` (outermost first) around each call of every method."""

    def __init__(self, scopes: Sequence[CallScope]) -> None:
        self._scopes = tuple(scopes)
        # intercept_service runs for every call; wrap each method's handler once.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap_handler(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        attr, build = _HANDLER_KINDS[(handler.request_streaming, handler.response_streaming)]
        return build(
            self._wrap_behavior(getattr(handler, attr), method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap_behavior(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        scopes = self._scopes

        if inspect.isasyncgenfunction(behavior):

            async def stream_behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with AsyncExitStack() as stack:
                    for scope in scopes:
                        await stack.enter_async_context(scope(method, context))
                    async for response in behavior(request, context):
                        yield response

            return stream_behavior

        async def call_behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with AsyncExitStack() as stack:
                for scope in scopes:
                    await stack.enter_async_context(scope(method, context))
                return await behavior(request, context)

        return call_behavior


@asynccontextmanager
async def bind_request_id(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Adopt the caller's `x-request-id` (or mint one), bind it for logs and echo it back.

    Each RPC runs in its own task with its own copy of the context, so the id
    needs no reset afterwards. Because the id goes out as initial metadata
    here, servicers must use trailing metadata for their own headers.
    """
    incoming = dict(context.invocation_metadata() or ()).get(REQUEST_ID_HEADER)
    rid = accept_request_id(incoming) or new_request_id()
    request_id_var.set(rid)
    await context.send_initial_metadata(((REQUEST_ID_HEADER, rid),))
    yield


@asynccontextmanager
async def map_errors(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Turn whatever a servicer raises into a status; the server itself never sees an exception."""
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except CairnError as err:
        logger.info("%s failed: %s", method, err.message, extra={"code": err.code.name})
        await context.abort(err.code, err.message)
    except grpc.RpcError as err:
        # A downstream call failed and the servicer let it through: pass its
        # status on, so UNAVAILABLE from the tokenizer stays UNAVAILABLE at the router.
        code, details = err.code(), err.details()
        logger.warning("%s: downstream call failed: %s %s", method, code.name, details)
        await context.abort(code, details or code.name)
    except Exception as err:
        logger.exception("%s: unhandled %s", method, type(err).__name__)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error ({type(err).__name__}); request id {request_id_var.get()}",
        )
