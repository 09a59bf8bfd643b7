"""The OpenAI-compatible request bodies, as pydantic models (they are also the OpenAPI schema).

Types are strict (a string is not a number, a bool is not an integer) and
unknown fields are refused, so a parameter cairn does not implement is an
error the caller sees, never a setting silently ignored. Beyond OpenAI's
fields the vLLM extensions cairn implements are accepted too (top_k, min_p,
repetition_penalty, min_tokens, ignore_eos, stop_token_ids, ...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_N = 128


def _check_unicode(value: Any) -> None:
    """JSON escapes can carry lone surrogates, which no UTF-8 consumer downstream accepts."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("strings must be valid Unicode (a lone surrogate escape was sent)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key)
            _check_unicode(item)
    elif isinstance(value, list):
        for item in value:
            _check_unicode(item)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = Field(False, description="send a last chunk with the usage of the whole request")


class SamplingFields(_Body):
    """Fields completions and chat share."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        _check_unicode(data)
        return data

    model: str = Field(description="a model id from /v1/models")
    temperature: float | None = Field(None, description="0 is greedy; default 1")
    top_p: float | None = Field(None, description="nucleus sampling mass in (0, 1]; default 1")
    n: int = Field(1, description=f"completions to return, 1-{MAX_N}")
    stream: bool = Field(False, description="stream chunks as server-sent events")
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description="up to 16 strings that end a completion")
    presence_penalty: float = Field(0.0, description="in [-2, 2]")
    frequency_penalty: float = Field(0.0, description="in [-2, 2]")
    logit_bias: dict[str, float] | None = Field(
        None, description="token id (as a string) -> bias in [-100, 100]"
    )
    seed: int | None = Field(None, description="makes sampling reproducible")
    user: str | None = Field(None, description="end-user id, for logs")
    top_k: int = Field(0, description="keep the k most likely tokens; 0 or -1: off")
    min_p: float = Field(0.0, description="drop tokens below min_p times the top probability")
    repetition_penalty: float | None = Field(None, description="> 0; 1 is off")
    min_tokens: int = Field(0, description="generate at least this many tokens before any stop")
    ignore_eos: bool = Field(False, description="keep generating past end-of-sequence")
    stop_token_ids: list[int] | None = Field(None, description="token ids that end a completion")
    skip_special_tokens: bool = Field(True, description="leave special tokens out of the text")
    include_stop_str_in_output: bool = Field(False, description="keep the matched stop string in the text")
    priority: int = Field(0, description="lower runs first")


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="text, a list of texts, token ids, or a list of token-id lists"
    )
    suffix: str | None = Field(None, description="not supported (no fill-in-the-middle); must be unset")
    max_tokens: int | None = Field(
        16, description="tokens to generate at most; null: up to the context length"
    )
    best_of: int | None = Field(None, description="generate this many, return the n most likely; >= n")
    logprobs: int | None = Field(
        None, description="return logprobs of the chosen and this many top tokens, 0-20"
    )
    echo: bool = Field(False, description="return the prompt before the completion")


class FunctionCall(_Body):
    name: str
    arguments: str = Field(description="the arguments as a JSON object string")


class ToolCallItem(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = Field(None, description="text, or a list of text parts")
    name: str | None = None
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, content: Any) -> Any:
        if isinstance(content, list):
            for i, part in enumerate(content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(
                        f"content[{i}]: only text parts ({{'type': 'text', 'text': ...}}) are supported; "
                        "this model takes text only"
                    )
        return content


class FunctionDefinition(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments")
    strict: bool | None = Field(None, description="accepted; arguments are not constrained to the schema")


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(_Body):
    type: str


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(
        None, description="tokens to generate at most; null: up to the context length"
    )
    max_completion_tokens: int | None = Field(None, description="OpenAI's newer name for max_tokens")
    logprobs: bool = Field(False, description="return logprobs of the chosen tokens")
    top_logprobs: int | None = Field(
        None, description="and of this many top alternatives, 0-20 (needs logprobs)"
    )
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = Field(None, description="false: at most one tool call per answer")
    response_format: ResponseFormat | None = Field(
        None, description="only {'type': 'text'} (no constrained decoding)"
    )
