"""OpenAI request bodies -> cairn.v1 requests, the ones the gRPC API takes.

Checks that need the OpenAI spelling (field names, ranges the proto's
unsigned types cannot even hold) happen here; everything else is validated
once, in `RouterCore`, for both APIs alike.
"""

from __future__ import annotations

import json

from cairn.common.errors import InvalidArgument
from cairn.services.worker.sampling_params import MAX_LOGPROBS
from cairn.v1 import common_pb2, inference_pb2

from .openai_protocol import MAX_N, ChatCompletionRequest, ChatMessage, CompletionRequest, SamplingFields

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
UINT64 = 2**64


class BadParam(InvalidArgument):
    """An invalid request naming the offending parameter (OpenAI's `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _in_range(param: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise BadParam(param, f"{param} must be in [{low}, {high}], got {value}")
    return value


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _options(
    body: SamplingFields, *, max_tokens: int | None, logprobs: int | None
) -> inference_pb2.GenerationOptions:
    sampling = common_pb2.SamplingParams(
        top_k=_in_range("top_k", body.top_k, -1, INT32_MAX),
        min_p=body.min_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
    )
    for name in ("temperature", "top_p", "repetition_penalty"):
        value = getattr(body, name)
        if value is not None:
            setattr(sampling, name, value)
    if body.seed is not None:
        # Negative seeds are valid OpenAI input; they map onto the unsigned range one to one.
        sampling.seed = _in_range("seed", body.seed, -(2**63), UINT64 - 1) % UINT64
    if logprobs is not None:
        sampling.logprobs = _in_range("logprobs", logprobs, 0, MAX_LOGPROBS)
    for key, bias in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise BadParam("logit_bias", f"logit_bias keys must be token ids, got {key!r}") from None
        sampling.logit_bias[_in_range("logit_bias", token, 0, INT32_MAX)] = bias
    stop = common_pb2.StopCriteria(
        min_tokens=_in_range("min_tokens", body.min_tokens, 0, UINT32_MAX),
        stop=_stops(body.stop),
        stop_token_ids=[_in_range("stop_token_ids", t, 0, INT32_MAX) for t in body.stop_token_ids or ()],
        ignore_eos=body.ignore_eos,
        include_stop_str_in_output=body.include_stop_str_in_output,
    )
    if max_tokens is not None:
        stop.max_tokens = _in_range("max_tokens", max_tokens, 1, UINT32_MAX)
    return inference_pb2.GenerationOptions(
        sampling=sampling,
        stop=stop,
        n=_in_range("n", body.n, 1, MAX_N),
        skip_special_tokens=body.skip_special_tokens,
        user=body.user or "",
        priority=_in_range("priority", body.priority, -(2**31), INT32_MAX),
    )


def completion_requests(body: CompletionRequest) -> list[inference_pb2.GenerateRequest]:
    """One GenerateRequest per prompt (OpenAI accepts a batch of prompts in one call)."""
    if body.suffix is not None:
        raise BadParam("suffix", "suffix is not supported: cairn has no fill-in-the-middle completion")
    options = _options(body, max_tokens=body.max_tokens, logprobs=body.logprobs)
    if body.best_of is not None:
        options.best_of = _in_range("best_of", body.best_of, 1, MAX_N)
    prompts = _prompts(body.prompt)
    requests = []
    for prompt in prompts:
        request = inference_pb2.GenerateRequest(model=body.model, options=options, echo=body.echo)
        if isinstance(prompt, str):
            request.text = prompt
        else:
            request.token_ids.ids.extend(prompt)
        requests.append(request)
    return requests


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise BadParam("prompt", "prompt is an empty list; give text, token ids or a list of either")
    # One list of ids is one prompt; otherwise every item is a prompt.
    prompts: list[str | list[int]] = [prompt] if isinstance(prompt[0], int) else list(prompt)
    for i, p in enumerate(prompts):
        if isinstance(p, list):
            if not p:
                raise BadParam("prompt", f"prompt[{i}] has no token ids")
            bad = [t for t in p if not 0 <= t <= INT32_MAX]
            if bad:
                raise BadParam("prompt", f"prompt token ids must be >= 0, got {bad[:5]}")
    return prompts


def chat_request(body: ChatCompletionRequest) -> inference_pb2.ChatRequest:
    if body.response_format is not None and body.response_format.type != "text":
        raise BadParam(
            "response_format",
            f"response_format {body.response_format.type!r} is not supported: cairn has no constrained "
            "decoding; ask for JSON in the prompt and parse the text, or use tools",
        )
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise BadParam("max_completion_tokens", "give max_tokens or max_completion_tokens, not both")
    if body.top_logprobs is not None and not body.logprobs:
        raise BadParam("top_logprobs", "top_logprobs needs logprobs set to true")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    request = inference_pb2.ChatRequest(
        model=body.model,
        messages=[_message(m) for m in body.messages],
        tools=[
            common_pb2.Tool(
                type=t.type,
                function=common_pb2.FunctionDefinition(
                    name=t.function.name,
                    description=t.function.description or "",
                    parameters_json=json.dumps(t.function.parameters)
                    if t.function.parameters is not None
                    else "",
                ),
            )
            for t in body.tools or ()
        ],
        options=_options(body, max_tokens=max_tokens, logprobs=logprobs),
    )
    if isinstance(body.tool_choice, str):
        request.tool_choice.mode = body.tool_choice
    elif body.tool_choice is not None:
        request.tool_choice.function_name = body.tool_choice.function.name
    return request


def _message(message: ChatMessage) -> common_pb2.ChatMessage:
    content = message.content
    if isinstance(content, list):
        content = "\n".join(part["text"] for part in content)
    return common_pb2.ChatMessage(
        role=message.role,
        content=content or "",
        name=message.name or "",
        tool_calls=[
            common_pb2.ToolCall(
                id=c.id, type=c.type, name=c.function.name, arguments_json=c.function.arguments
            )
            for c in message.tool_calls or ()
        ],
        tool_call_id=message.tool_call_id or "",
    )
