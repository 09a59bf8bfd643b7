"""Bad input, over HTTP and gRPC: OpenAI-style errors with the right status, and a stack left as it was."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx2 as httpx
import pytest
from router_harness import Router, wait_idle

from cairn.v1 import common_pb2, inference_pb2

COMPLETION = {"model": "tiny", "prompt": "Hello", "max_tokens": 4}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
LONG_PROMPT = "word " * 2100
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def completion(**fields: Any) -> dict[str, Any]:
    return {**COMPLETION, **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return {**CHAT, **fields}


# (case, path, JSON body, expected status, text the message must contain, expected param)
HTTP_CASES: list[tuple[str, str, Any, int, str, str | None]] = [
    ("unknown model", "/v1/completions", completion(model="gpt-5"), 404, "available models: tiny", None),
    ("negative max_tokens", "/v1/completions", completion(max_tokens=-1), 400, "max_tokens", "max_tokens"),
    ("zero max_tokens", "/v1/completions", completion(max_tokens=0), 400, "max_tokens", "max_tokens"),
    ("temperature below 0", "/v1/completions", completion(temperature=-0.5), 400, "temperature", None),
    ("top_p above 1", "/v1/completions", completion(top_p=1.5), 400, "top_p", None),
    (
        "presence_penalty out of range",
        "/v1/completions",
        completion(presence_penalty=3),
        400,
        "presence_penalty",
        None,
    ),
    ("logprobs above 20", "/v1/completions", completion(logprobs=21), 400, "logprobs", "logprobs"),
    ("n of 0", "/v1/completions", completion(n=0), 400, "n must be", "n"),
    (
        "n above best_of",
        "/v1/completions",
        completion(n=3, best_of=2),
        400,
        "best_of (2) must be >= n (3)",
        None,
    ),
    (
        "streaming best_of",
        "/v1/completions",
        completion(n=1, best_of=2, stream=True),
        400,
        "cannot stream",
        None,
    ),
    (
        "prompt longer than the context",
        "/v1/completions",
        completion(prompt=LONG_PROMPT),
        400,
        "context length",
        None,
    ),
    (
        "prompt + max_tokens over the context",
        "/v1/completions",
        completion(max_tokens=2047),
        400,
        "context length",
        None,
    ),
    ("max_tokens string", "/v1/completions", completion(max_tokens="10"), 400, "valid integer", "max_tokens"),
    (
        "temperature string",
        "/v1/completions",
        completion(temperature="hot"),
        400,
        "valid number",
        "temperature",
    ),
    ("stream string", "/v1/completions", completion(stream="yes"), 400, "valid boolean", "stream"),
    ("n boolean", "/v1/completions", completion(n=True), 400, "valid integer", "n"),
    ("prompt number", "/v1/completions", completion(prompt=5), 400, "prompt", "prompt"),
    ("missing model", "/v1/completions", {"prompt": "x"}, 400, "'model' is required", "model"),
    (
        "unknown field",
        "/v1/completions",
        completion(frobnicate=1),
        400,
        "unsupported parameter 'frobnicate'",
        "frobnicate",
    ),
    ("suffix", "/v1/completions", completion(suffix="!"), 400, "suffix is not supported", "suffix"),
    ("logit_bias key", "/v1/completions", completion(logit_bias={"abc": 1}), 400, "token ids", "logit_bias"),
    ("logit_bias value", "/v1/completions", completion(logit_bias={"5": 500}), 400, "[-100, 100]", None),
    (
        "logit_bias token outside vocab",
        "/v1/completions",
        completion(logit_bias={"999999": 1}),
        400,
        "vocabulary",
        None,
    ),
    (
        "too many stops",
        "/v1/completions",
        completion(stop=[str(i) for i in range(17)]),
        400,
        "at most 16",
        None,
    ),
    ("empty stop", "/v1/completions", completion(stop=[""]), 400, "empty", None),
    ("empty prompt list", "/v1/completions", completion(prompt=[]), 400, "empty list", "prompt"),
    ("negative token id", "/v1/completions", completion(prompt=[1, -5]), 400, ">= 0", "prompt"),
    ("token id outside vocab", "/v1/completions", completion(prompt=[1, 99999]), 400, "vocabulary", None),
    ("seed out of range", "/v1/completions", completion(seed=2**70), 400, "seed", "seed"),
    (
        "lone surrogate",
        "/v1/completions",
        '{"model": "tiny", "prompt": "\\ud800"}',
        400,
        "valid Unicode",
        None,
    ),
    ("empty messages", "/v1/chat/completions", chat(messages=[]), 400, "at least 1", "messages"),
    (
        "unknown role",
        "/v1/chat/completions",
        chat(messages=[{"role": "robot", "content": "x"}]),
        400,
        "role",
        "messages.0.role",
    ),
    (
        "image content",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "only text parts",
        "messages.0.content",
    ),
    (
        "tool message without id",
        "/v1/chat/completions",
        chat(messages=[{"role": "tool", "content": "1"}]),
        400,
        "tool_call_id",
        None,
    ),
    (
        "tool_choice without tools",
        "/v1/chat/completions",
        chat(tool_choice="required"),
        400,
        "needs tools",
        None,
    ),
    (
        "named tool not offered",
        "/v1/chat/completions",
        chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "g"}}),
        400,
        "not among the tools",
        None,
    ),
    (
        "json mode",
        "/v1/chat/completions",
        chat(response_format={"type": "json_object"}),
        400,
        "constrained",
        "response_format",
    ),
    (
        "top_logprobs alone",
        "/v1/chat/completions",
        chat(top_logprobs=2),
        400,
        "needs logprobs",
        "top_logprobs",
    ),
    (
        "both max token fields",
        "/v1/chat/completions",
        chat(max_completion_tokens=3),
        400,
        "not both",
        "max_completion_tokens",
    ),
    (
        "chat temperature NaN",
        "/v1/chat/completions",
        '{"model": "tiny", "messages": [], "temperature": NaN}',
        400,
        "",
        "temperature",
    ),
]


@pytest.fixture(scope="module")
def http(router: Router) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=router.http_url, timeout=60) as client:
        yield client


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "text", "param"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES]
)
def test_bad_http_requests_get_openai_errors(
    http: httpx.Client, case: str, path: str, body: Any, status: int, text: str, param: str | None
) -> None:
    if isinstance(body, str):
        response = http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert text in error["message"]
    assert error["param"] == param
    assert error["type"] == ("invalid_request_error" if status in (400, 404) else error["type"])


@pytest.mark.parametrize(
    ("content", "text"),
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ("", "needs a JSON body")],
)
def test_malformed_bodies(http: httpx.Client, content: str, text: str) -> None:
    response = http.post("/v1/completions", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and text in response.json()["error"]["message"]


def test_unknown_routes_and_methods(http: httpx.Client) -> None:
    assert http.get("/v1/engines").status_code == 404
    wrong = http.post("/v1/models")
    assert wrong.status_code == 405 and "no route" in wrong.json()["error"]["message"]


def grpc_generate(**fields: Any) -> inference_pb2.GenerateRequest:
    sampling = fields.pop("sampling", {})
    stop = fields.pop("stop", {"max_tokens": 4})
    return inference_pb2.GenerateRequest(
        options=inference_pb2.GenerationOptions(
            sampling=common_pb2.SamplingParams(**sampling),
            stop=common_pb2.StopCriteria(**stop),
            n=fields.pop("n", 0),
            best_of=fields.pop("best_of", 0),
        ),
        **({"model": "tiny", "text": "Hello"} | fields),
    )


GRPC_CASES = [
    (
        "unknown model",
        "Generate",
        grpc_generate(model="gpt-5"),
        grpc.StatusCode.NOT_FOUND,
        "available models",
    ),
    (
        "no prompt",
        "Generate",
        inference_pb2.GenerateRequest(model="tiny"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt",
    ),
    (
        "zero max_tokens",
        "Generate",
        grpc_generate(stop={"max_tokens": 0}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_tokens",
    ),
    (
        "negative temperature",
        "Generate",
        grpc_generate(sampling={"temperature": -1}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "temperature",
    ),
    (
        "NaN top_p",
        "Generate",
        grpc_generate(sampling={"top_p": float("nan")}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "finite",
    ),
    (
        "n above best_of",
        "Generate",
        grpc_generate(n=2, best_of=1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "best_of",
    ),
    (
        "too long",
        "Generate",
        grpc_generate(text=LONG_PROMPT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "context length",
    ),
    (
        "ids outside vocab",
        "Generate",
        grpc_generate(text=None, token_ids=inference_pb2.TokenIds(ids=[5, 100000])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "vocabulary",
    ),
    (
        "empty chat",
        "Chat",
        inference_pb2.ChatRequest(model="tiny"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages",
    ),
    (
        "bad role",
        "Chat",
        inference_pb2.ChatRequest(model="tiny", messages=[common_pb2.ChatMessage(role="robot", content="x")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "role",
    ),
    (
        "empty tokenize",
        "Tokenize",
        inference_pb2.TokenizeRequest(model="tiny"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "text",
    ),
]


@pytest.mark.parametrize(
    ("case", "method", "request_", "code", "text"), GRPC_CASES, ids=[c[0] for c in GRPC_CASES]
)
def test_bad_grpc_requests_get_their_status(
    stub: Any, case: str, method: str, request_: Any, code: grpc.StatusCode, text: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, method)(request_)
    assert error.value.code() == code and text in error.value.details()


def test_bad_requests_leave_nothing_behind(router: Router, http: httpx.Client) -> None:
    core = router.runtime.core
    assert core.gate.running == 0 and core.gate.waiting == 0
    wait_idle(router.runtime.config.deployments["tiny"][0])
    assert http.post("/v1/completions", json=COMPLETION).status_code == 200
