"""cairn.v1 tokenizer messages to and from the plain records the core uses (both directions:
the server reads requests, the client builds them)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from cairn.common.errors import InvalidArgument
from cairn.v1 import common_pb2, tokenizer_pb2

from .records import (
    ChatInput,
    DetokenizeState,
    Encoding,
    StreamResult,
    StreamStep,
    TokenizerInfo,
    TruncationSide,
)

_SIDES: dict[int, TruncationSide] = {
    tokenizer_pb2.TRUNCATION_SIDE_RIGHT: "right",
    tokenizer_pb2.TRUNCATION_SIDE_LEFT: "left",
}
_SIDE_VALUES = {side: value for value, side in _SIDES.items()}

# ---- chat


def chat_from_proto(chat: tokenizer_pb2.ChatInput) -> ChatInput:
    return ChatInput(
        messages=[_message_from_proto(i, m) for i, m in enumerate(chat.messages)],
        tools=[_tool_from_proto(i, t) for i, t in enumerate(chat.tools)],
        add_generation_prompt=chat.add_generation_prompt if chat.HasField("add_generation_prompt") else None,
        continue_final_message=chat.continue_final_message,
        chat_template=chat.chat_template,
    )


def _message_from_proto(index: int, message: common_pb2.ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": call.type or "function",
                "function": {
                    "name": call.name,
                    "arguments": _json_object(
                        call.arguments_json, f"messages[{index}].tool_calls[{j}].arguments_json"
                    ),
                },
            }
            for j, call in enumerate(message.tool_calls)
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool_from_proto(index: int, tool: common_pb2.Tool) -> dict[str, Any]:
    function = tool.function
    if not function.name:
        raise InvalidArgument(f"tools[{index}].function.name is empty")
    return {
        "type": tool.type or "function",
        "function": {
            "name": function.name,
            "description": function.description,
            "parameters": _json_object(function.parameters_json, f"tools[{index}].function.parameters_json"),
        },
    }


def _json_object(text: str, what: str) -> dict[str, Any]:
    """Chat templates expect arguments and schemas as objects, not JSON strings; empty means {}."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def chat_to_proto(chat: ChatInput) -> tokenizer_pb2.ChatInput:
    message = tokenizer_pb2.ChatInput(
        messages=[_message_to_proto(m) for m in chat.messages],
        tools=[_tool_to_proto(t) for t in chat.tools],
        continue_final_message=chat.continue_final_message,
        chat_template=chat.chat_template,
    )
    if chat.add_generation_prompt is not None:
        message.add_generation_prompt = chat.add_generation_prompt
    return message


def _message_to_proto(message: Mapping[str, Any]) -> common_pb2.ChatMessage:
    calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function", call)
        calls.append(
            common_pb2.ToolCall(
                id=call.get("id", ""),
                type=call.get("type", "function"),
                name=function.get("name", ""),
                arguments_json=_json_text(function.get("arguments")),
            )
        )
    return common_pb2.ChatMessage(
        role=message.get("role", ""),
        content=message.get("content") or "",
        name=message.get("name") or "",
        tool_calls=calls,
        tool_call_id=message.get("tool_call_id") or "",
    )


def _tool_to_proto(tool: Mapping[str, Any]) -> common_pb2.Tool:
    function = tool.get("function", {})
    return common_pb2.Tool(
        type=tool.get("type", "function"),
        function=common_pb2.FunctionDefinition(
            name=function.get("name", ""),
            description=function.get("description", ""),
            parameters_json=_json_text(function.get("parameters")),
        ),
    )


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


# ---- encode / decode


def inputs_from_proto(inputs: Sequence[tokenizer_pb2.EncodeInput]) -> list[str | ChatInput]:
    out: list[str | ChatInput] = []
    for i, item in enumerate(inputs):
        kind = item.WhichOneof("input")
        if kind is None:
            raise InvalidArgument(f"inputs[{i}] has neither text nor chat")
        out.append(item.text if kind == "text" else chat_from_proto(item.chat))
    return out


def inputs_to_proto(inputs: Sequence[str | ChatInput]) -> list[tokenizer_pb2.EncodeInput]:
    return [
        tokenizer_pb2.EncodeInput(text=item)
        if isinstance(item, str)
        else tokenizer_pb2.EncodeInput(chat=chat_to_proto(item))
        for item in inputs
    ]


def truncation_side_from_proto(value: int) -> TruncationSide:
    side = _SIDES.get(value)
    if side is None:
        raise InvalidArgument(f"truncation_side {value} is not a TruncationSide value")
    return side


def truncation_side_to_proto(side: TruncationSide) -> int:
    return _SIDE_VALUES[side]


def encoding_to_proto(encoding: Encoding) -> tokenizer_pb2.Encoding:
    return tokenizer_pb2.Encoding(
        token_ids=encoding.token_ids, truncated=encoding.truncated, rendered=encoding.rendered
    )


def encoding_from_proto(encoding: tokenizer_pb2.Encoding) -> Encoding:
    return Encoding(list(encoding.token_ids), encoding.truncated, encoding.rendered)


# ---- detokenize


def state_from_proto(state: tokenizer_pb2.DetokenizeState) -> DetokenizeState:
    return DetokenizeState(tuple(state.context_token_ids), state.prefix_offset, state.read_offset)


def state_to_proto(state: DetokenizeState) -> tokenizer_pb2.DetokenizeState:
    return tokenizer_pb2.DetokenizeState(
        context_token_ids=state.context_token_ids,
        prefix_offset=state.prefix_offset,
        read_offset=state.read_offset,
    )


def step_from_proto(stream: tokenizer_pb2.DetokenizeStream) -> StreamStep:
    return StreamStep(
        model=stream.model.ref,
        new_token_ids=list(stream.new_token_ids),
        state=state_from_proto(stream.state),
        skip_special_tokens=stream.skip_special_tokens,
        final=stream.final,
        stream_id=stream.stream_id,
    )


def step_to_proto(step: StreamStep) -> tokenizer_pb2.DetokenizeStream:
    return tokenizer_pb2.DetokenizeStream(
        stream_id=step.stream_id,
        model=common_pb2.ModelRef(ref=step.model),
        new_token_ids=step.new_token_ids,
        state=state_to_proto(step.state),
        skip_special_tokens=step.skip_special_tokens,
        final=step.final,
    )


def result_to_proto(result: StreamResult) -> tokenizer_pb2.DetokenizeResult:
    return tokenizer_pb2.DetokenizeResult(
        stream_id=result.stream_id,
        text=result.text,
        state=state_to_proto(result.state),
        token_texts=result.token_texts,
    )


def result_from_proto(result: tokenizer_pb2.DetokenizeResult) -> StreamResult:
    return StreamResult(
        stream_id=result.stream_id,
        text=result.text,
        state=state_from_proto(result.state),
        token_texts=list(result.token_texts),
    )


# ---- info


def info_to_proto(info: TokenizerInfo) -> tokenizer_pb2.TokenizerInfo:
    return tokenizer_pb2.TokenizerInfo(
        model=info.model,
        vocab_size=info.vocab_size,
        bos_token_id=-1 if info.bos_token_id is None else info.bos_token_id,
        eos_token_ids=info.eos_token_ids,
        has_chat_template=info.has_chat_template,
        supports_tools=info.supports_tools,
        model_max_length=info.model_max_length,
        special_token_ids=info.special_token_ids,
    )


def info_from_proto(info: tokenizer_pb2.TokenizerInfo) -> TokenizerInfo:
    return TokenizerInfo(
        model=info.model,
        vocab_size=info.vocab_size,
        bos_token_id=None if info.bos_token_id < 0 else info.bos_token_id,
        eos_token_ids=tuple(info.eos_token_ids),
        has_chat_template=info.has_chat_template,
        supports_tools=info.supports_tools,
        model_max_length=info.model_max_length,
        special_token_ids=tuple(info.special_token_ids),
    )
