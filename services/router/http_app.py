"""The OpenAI-compatible HTTP API: an ASGI app (FastAPI) over `RouterCore`.

    POST /v1/completions        text or token-id prompts (one or a batch), streaming or not
    POST /v1/chat/completions   conversations, tools, streaming or not
    GET  /v1/models             what this router serves
    GET  /health                200 when every deployment has a reachable scheduler, else 503
    GET  /metrics               Prometheus
    GET  /openapi.json, /docs   the schema of all of the above

Errors are OpenAI-shaped (`{"error": {"message", "type", "param", "code"}}`)
with the status of the cairn error behind them: 400 bad input, 401 bad key,
404 unknown model, 429 over a rate or the queue (with Retry-After), 503 no
scheduler, 504 deadline. A client that disconnects cancels its generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cairn.common.errors import CairnError, ResourceExhausted, Unauthenticated
from cairn.common.request_id import REQUEST_ID_HEADER, accept_request_id, new_request_id, request_id_var

from . import metrics
from . import openai_format as fmt
from . import openai_translate as translate
from .admission import RetryLater
from .auth import Principal
from .chat import ChatGeneration
from .core import RouterCore, cairn_version
from .generation import Generation
from .openai_protocol import ChatCompletionRequest, CompletionRequest
from .sse import ClientGone, EventStream, sse_event, until_disconnected

logger = logging.getLogger("cairn.router.http")

T = TypeVar("T")

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type"],
        }
    },
    "required": ["error"],
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for status, text in [
        (400, "invalid request"),
        (401, "missing or invalid API key"),
        (404, "unknown model"),
        (429, "rate limit or queue full; see Retry-After"),
        (503, "no scheduler reachable"),
        (504, "deadline exceeded"),
    ]
}
_GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the completion; with stream=true, server-sent events of chunks ending in [DONE]",
        "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}},
    },
    **_ERRORS,
}
_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"})
_DONE = sse_event("[DONE]")


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


class _RequestIds:
    """ASGI middleware: adopt or mint `x-request-id`, bind it for logs and downstream calls, echo it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        rid = accept_request_id(incoming) or new_request_id()
        token = request_id_var.set(rid)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            route = scope["path"] if scope["path"] in _ROUTES else "other"
            metrics.HTTP_REQUESTS.labels(route, str(status)).inc()


def _error_response(error: CairnError) -> JSONResponse:
    headers = {}
    if isinstance(error, ResourceExhausted):
        # A scheduler's full queue is passed on with the same hint as the router's own.
        headers["Retry-After"] = error.retry_after_header if isinstance(error, RetryLater) else "1"
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(fmt.cairn_error_body(error), status_code=error.http_status, headers=headers)


# Pydantic names the member of a union it tried in the location ("prompt.str"); those are no parameters.
_UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "none"})


def _validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    loc = [
        str(part)
        for part in error.get("loc", ())
        if part != "body" and str(part) not in _UNION_MEMBERS and "[" not in str(part)
    ]
    param = ".".join(loc) or None
    kind = error.get("type", "")
    if kind == "json_invalid":
        return f"the body is not valid JSON: {error.get('ctx', {}).get('error', error.get('msg'))}", None
    if kind == "extra_forbidden":
        return f"unsupported parameter {param!r}: cairn does not implement it", param
    if kind == "missing":
        return (f"{param!r} is required", param) if param else ("the request needs a JSON body", None)
    if kind == "model_attributes_type" and not loc:
        return "the body must be a JSON object", None
    message = error.get("msg", "invalid value")
    return (f"{param}: {message}" if param else message), param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CairnError)
    async def cairn_error(request: Request, error: CairnError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error.errors()[0])
        return JSONResponse(fmt.error_body(400, message, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = (
            f"no route {request.method} {request.url.path}"
            if error.status_code in (404, 405)
            else error.detail
        )
        return JSONResponse(fmt.error_body(error.status_code, str(message)), status_code=error.status_code)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled %s", type(error).__name__)
        message = f"internal error ({type(error).__name__}); request id {request_id_var.get()}"
        return JSONResponse(fmt.error_body(500, message), status_code=500)


async def _merge(streams: Sequence[AsyncGenerator[T, None]]) -> AsyncGenerator[T, None]:
    """Items of several async generators as they come."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for item in only:
                yield item
        return
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def pump(stream: AsyncGenerator[T, None]) -> None:
        try:
            async for item in stream:
                queue.put_nowait(("item", item))
            queue.put_nowait(("done", None))
        except Exception as error:
            queue.put_nowait(("error", error))

    tasks = [asyncio.ensure_future(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            kind, value = await queue.get()
            if kind == "error":
                raise value
            if kind == "done":
                remaining -= 1
            else:
                yield value
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _gather(coroutines: Sequence[Any]) -> list[Any]:
    """Like asyncio.gather, but the first failure cancels the rest."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _completion_choice(
    index: int, text: str, logprobs: Any, finish: int, stop: str, tokens: Any
) -> dict[str, Any]:
    return {
        "index": index,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": fmt.finish_reason(finish),
        "stop_reason": fmt.stop_reason(finish, stop, tokens),
    }


async def _completion_choices(
    generation: Generation, base: int, logprobs: bool
) -> AsyncGenerator[list[dict], None]:
    """Stream choices of one prompt; the echo goes out with the first chunk (prompt logprobs known)."""
    spec = generation.spec
    offsets = dict.fromkeys(range(spec.n), 0)
    echoed = not spec.echo
    async for chunks in generation.steps():
        out = []
        if not echoed:
            echoed = True
            for i in range(spec.n):
                lp = fmt.completion_logprobs(generation.prompt_tokens, 0) if logprobs else None
                out.append(_completion_choice(base + i, spec.echo_text, lp, 0, "", ()))
                offsets[i] = len(spec.echo_text)
        for c in chunks:
            lp = fmt.completion_logprobs(c.tokens, offsets.get(c.index, 0)) if logprobs else None
            offsets[c.index] = offsets.get(c.index, 0) + len(c.text)
            if c.text or c.finish_reason or (logprobs and c.tokens):
                out.append(
                    _completion_choice(base + c.index, c.text, lp, c.finish_reason, c.matched_stop, c.tokens)
                )
        if out:
            yield out


async def _chat_choices(
    chat: ChatGeneration, logprobs: bool, parallel_tool_calls: bool
) -> AsyncGenerator[list[dict], None]:
    async for chunks in chat.steps():
        out = []
        for c in chunks:
            delta: dict[str, Any] = {}
            if c.role:
                delta["role"] = c.role
            if c.content or c.role:
                delta["content"] = c.content
            calls = c.tool_calls if parallel_tool_calls else c.tool_calls[:1]
            if calls:
                delta["tool_calls"] = fmt.tool_calls(calls, streaming=True)
            lp = fmt.chat_logprobs(c.tokens) if logprobs and c.tokens else None
            if delta or c.finish_reason or lp:
                out.append(
                    {
                        "index": c.index,
                        "delta": delta,
                        "logprobs": lp,
                        "finish_reason": fmt.finish_reason(c.finish_reason),
                        "stop_reason": fmt.stop_reason(c.finish_reason, c.matched_stop, c.tokens),
                    }
                )
        if out:
            yield out


def create_app(core: RouterCore, *, is_serving: Callable[[], bool] = lambda: True) -> FastAPI:
    app = FastAPI(
        title="cairn",
        version=cairn_version(),
        description="OpenAI-compatible API of the cairn router. Authenticate with "
        "'Authorization: Bearer KEY' when the router has API keys.",
        redoc_url=None,
    )
    app.add_middleware(_RequestIds)
    _install_error_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="an API key of the router (none needed without keys)")

    def authorize(request: Request, _: HTTPAuthorizationCredentials | None = Security(bearer)) -> Principal:
        return core.authorize(request.headers.get("authorization"))

    async def open_all(stack: AsyncExitStack, opening: Sequence[Any]) -> list[Any]:
        try:
            return [await stack.enter_async_context(context) for context in opening]
        except BaseException:
            await stack.aclose()
            raise

    def stream(
        stack: AsyncExitStack,
        kind: str,
        rid: str,
        model: str,
        fingerprint: str,
        choices: AsyncGenerator[list[dict], None],
        usage: Callable[[], Any] | None,
    ) -> EventStream:
        created = int(time.time())

        async def events() -> AsyncGenerator[bytes, None]:
            try:
                async with stack, contextlib.aclosing(choices) as chunks:
                    async for out in chunks:
                        body = fmt.envelope(kind, rid, created, model, fingerprint, out)
                        if usage is not None:
                            body["usage"] = None
                        yield sse_event(_json(body))
                    if usage is not None:
                        body = fmt.envelope(kind, rid, created, model, fingerprint, [])
                        body["usage"] = fmt.usage(usage())
                        yield sse_event(_json(body))
            except CairnError as error:
                yield sse_event(_json(fmt.cairn_error_body(error)))
            except Exception as error:
                logger.exception("stream failed")
                yield sse_event(_json(fmt.error_body(500, f"internal error ({type(error).__name__})")))
            yield _DONE

        return EventStream(events(), cleanup=stack.aclose)

    @app.post("/v1/completions", responses=_GENERATION_RESPONSES, tags=["OpenAI"])
    async def completions(
        body: CompletionRequest, request: Request, principal: Principal = Depends(authorize)
    ) -> Response:
        requests = translate.completion_requests(body)
        deadline = core.deadline(None)
        rid = f"cmpl-{uuid.uuid4().hex}"
        stack = AsyncExitStack()
        opening = [core.generate_all(requests, deadline=deadline, stream=body.stream)]
        [generations] = await until_disconnected(request.receive, open_all(stack, opening))
        fingerprint = core.fingerprint(generations[0].spec.target)
        logprobs = body.logprobs is not None
        n = generations[0].spec.n
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            choices = _merge([_completion_choices(g, i * n, logprobs) for i, g in enumerate(generations)])
            usage = (lambda: fmt.sum_usage([g.usage for g in generations])) if include_usage else None
            return stream(stack, "text_completion", rid, body.model, fingerprint, choices, usage)

        async def run() -> dict[str, Any]:
            async with stack:
                results = await _gather([g.collect() for g in generations])
            choices = []
            for i, (generation, seqs) in enumerate(zip(generations, results, strict=True)):
                spec = generation.spec
                echo = spec.echo_text if spec.echo else ""
                for s in seqs:
                    tokens = [*generation.prompt_tokens, *s.tokens] if spec.echo else s.tokens
                    lp = fmt.completion_logprobs(tokens, 0) if logprobs else None
                    choices.append(
                        _completion_choice(
                            i * n + s.index, echo + s.text, lp, s.finish_reason, s.matched_stop, s.tokens
                        )
                    )
            payload = fmt.envelope("text_completion", rid, int(time.time()), body.model, fingerprint, choices)
            payload["usage"] = fmt.usage(fmt.sum_usage([g.usage for g in generations]))
            return payload

        try:
            return JSONResponse(await until_disconnected(request.receive, run()))
        finally:
            await stack.aclose()

    @app.post("/v1/chat/completions", responses=_GENERATION_RESPONSES, tags=["OpenAI"])
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, principal: Principal = Depends(authorize)
    ) -> Response:
        chat_request = translate.chat_request(body)
        deadline = core.deadline(None)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        stack = AsyncExitStack()
        [chat] = await until_disconnected(
            request.receive, open_all(stack, [core.chat(chat_request, deadline=deadline, stream=body.stream)])
        )
        fingerprint = core.fingerprint(chat.generation.spec.target)
        parallel = body.parallel_tool_calls is not False
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            choices = _chat_choices(chat, body.logprobs, parallel)
            usage = (lambda: chat.usage) if include_usage else None
            return stream(stack, "chat.completion.chunk", rid, body.model, fingerprint, choices, usage)

        async def run() -> dict[str, Any]:
            async with stack:
                results = await chat.collect()
            choices = []
            for r in results:
                calls = r.tool_calls if parallel else r.tool_calls[:1]
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": r.content or (None if calls else ""),
                }
                if calls:
                    message["tool_calls"] = fmt.tool_calls(calls)
                choices.append(
                    {
                        "index": r.index,
                        "message": message,
                        "logprobs": fmt.chat_logprobs(r.tokens) if body.logprobs else None,
                        "finish_reason": fmt.finish_reason(r.finish_reason),
                        "stop_reason": fmt.stop_reason(r.finish_reason, r.matched_stop, r.tokens),
                    }
                )
            payload = fmt.envelope("chat.completion", rid, int(time.time()), body.model, fingerprint, choices)
            payload["usage"] = fmt.usage(chat.usage)
            return payload

        try:
            return JSONResponse(await until_disconnected(request.receive, run()))
        finally:
            await stack.aclose()

    @app.get("/v1/models", responses=_ERRORS, tags=["OpenAI"])
    async def models(principal: Principal = Depends(authorize)) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": m.id,
                    "object": "model",
                    "created": m.created,
                    "owned_by": "cairn",
                    "root": m.source,
                    "parent": m.base_model or None,
                    "max_model_len": m.max_model_len,
                }
                for m in core.list_models()
            ],
        }

    @app.get(
        "/health",
        tags=["Operations"],
        responses={503: {"description": "draining, or a deployment has no reachable scheduler"}},
    )
    async def health() -> JSONResponse:
        deployments = core.table.readiness()
        ok = is_serving() and all(ready > 0 for ready, _ in deployments.values())
        body = {
            "status": "ok" if ok else "unavailable",
            "deployments": {name: {"ready": r, "replicas": n} for name, (r, n) in deployments.items()},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["Operations"], response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app
