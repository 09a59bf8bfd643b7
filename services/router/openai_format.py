"""The router's results as OpenAI JSON: completions, chat completions, their stream chunks, errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cairn.common.errors import CairnError
from cairn.v1 import common_pb2

from .generation import Usage
from .tool_calls import ToolCall

_FINISH = {
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_EOS: "stop",
    common_pb2.FINISH_REASON_STOP_TOKEN: "stop",
    common_pb2.FINISH_REASON_STOP_STRING: "stop",
    common_pb2.FINISH_REASON_ABORT: "abort",
    common_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
}

_ERROR_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def finish_reason(code: int) -> str | None:
    return _FINISH.get(code)


def stop_reason(code: int, matched_stop: str, tokens: Sequence[common_pb2.Token]) -> str | int | None:
    """vLLM's extension: the stop string or stop token id that ended a choice."""
    if code == common_pb2.FINISH_REASON_STOP_STRING:
        return matched_stop
    if code == common_pb2.FINISH_REASON_STOP_TOKEN and tokens:
        return tokens[-1].id
    return None


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    default_type, default_code = _ERROR_TYPES.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    if status == 404 and "model" not in message:
        default_code = None
    return {"error": {"message": message, "type": default_type, "param": param, "code": code or default_code}}


def cairn_error_body(error: CairnError) -> dict[str, Any]:
    return error_body(error.http_status, error.message, getattr(error, "param", None))


def usage(total: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
        "total_tokens": total.total_tokens,
        "prompt_tokens_details": {"cached_tokens": total.cached_prompt_tokens},
    }


def sum_usage(usages: Sequence[Usage]) -> Usage:
    return Usage(
        sum(u.prompt_tokens for u in usages),
        sum(u.completion_tokens for u in usages),
        sum(u.cached_prompt_tokens for u in usages),
    )


def completion_logprobs(tokens: Sequence[common_pb2.Token], text_offset: int) -> dict[str, Any]:
    """The legacy completions format: parallel lists, top alternatives as {text: logprob}."""
    offsets = []
    for token in tokens:
        offsets.append(text_offset)
        text_offset += len(token.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob if t.HasField("logprob") else None for t in tokens],
        "top_logprobs": [
            {**{a.text: a.logprob for a in t.top_logprobs}, t.text: t.logprob}
            if t.HasField("logprob")
            else None
            for t in tokens
        ],
        "text_offset": offsets,
    }


def _token_entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_logprobs(tokens: Sequence[common_pb2.Token]) -> dict[str, Any]:
    return {
        "content": [
            {
                **_token_entry(t.text, t.logprob),
                "top_logprobs": [_token_entry(a.text, a.logprob) for a in t.top_logprobs],
            }
            for t in tokens
        ]
    }


def tool_calls(calls: Sequence[ToolCall], streaming: bool = False) -> list[dict[str, Any]]:
    return [
        {
            **({"index": i} if streaming else {}),
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments_json},
        }
        for i, c in enumerate(calls)
    ]


def envelope(
    kind: str, request_id: str, created: int, model: str, fingerprint: str, choices: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": choices,
    }
