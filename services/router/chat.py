"""Chat on top of a generation: conversations in, assistant messages (content and tool calls) out.

Messages and tools arrive as cairn.v1 messages (the HTTP API translates
OpenAI JSON into them) and go to the tokenizer's chat template as the
OpenAI-shaped dicts templates expect.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cairn.common.errors import InvalidArgument
from cairn.v1 import common_pb2

from .generation import Generation, Usage
from .tool_calls import ToolCall, ToolCallStream, ToolPolicy

ROLES = ("system", "developer", "user", "assistant", "tool")
FINISH_TOOL_CALLS = common_pb2.FINISH_REASON_TOOL_CALLS


def messages_to_dicts(messages: Sequence[common_pb2.ChatMessage]) -> list[dict[str, Any]]:
    if not messages:
        raise InvalidArgument("messages is empty; a chat needs at least one message")
    out = []
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.role!r}")
        # "developer" is OpenAI's newer name for the system message.
        message: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": m.content,
        }
        if m.name:
            message["name"] = m.name
        if m.tool_calls:
            if m.role != "assistant":
                raise InvalidArgument(f"messages[{i}]: only assistant messages carry tool_calls")
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments_json or "{}"},
                }
                for c in m.tool_calls
            ]
        if m.role == "tool":
            if not m.tool_call_id:
                raise InvalidArgument(f"messages[{i}]: a tool message needs the tool_call_id it answers")
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


def tools_to_dicts(tools: Sequence[common_pb2.Tool]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        spec: dict[str, Any] = {"name": tool.function.name}
        if tool.function.description:
            spec["description"] = tool.function.description
        if tool.function.parameters_json:
            try:
                spec["parameters"] = json.loads(tool.function.parameters_json)
            except json.JSONDecodeError as e:
                raise InvalidArgument(f"tools[{i}].function.parameters_json is not JSON: {e}") from None
        out.append({"type": tool.type or "function", "function": spec})
    return out


@dataclass
class ChatChunk:
    """New output of one answer. `role` is set on an answer's first chunk."""

    index: int
    content: str
    tokens: list[common_pb2.Token]
    role: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: int = common_pb2.FINISH_REASON_UNSPECIFIED
    matched_stop: str = ""


@dataclass
class ChatResult:
    index: int
    content: str
    tool_calls: list[ToolCall]
    tokens: list[common_pb2.Token]
    finish_reason: int
    matched_stop: str


class ChatGeneration:
    def __init__(self, generation: Generation, policy: ToolPolicy) -> None:
        self.generation = generation
        self.policy = policy

    @property
    def usage(self) -> Usage:
        return self.generation.usage

    def _split(self) -> ToolCallStream | None:
        return ToolCallStream(self.policy) if self.policy.active else None

    async def steps(self) -> AsyncIterator[list[ChatChunk]]:
        splitters: dict[int, ToolCallStream | None] = {}
        async for chunks in self.generation.steps():
            out = []
            for chunk in chunks:
                first = chunk.index not in splitters
                splitter = (
                    splitters[chunk.index] if not first else splitters.setdefault(chunk.index, self._split())
                )
                content = splitter.feed(chunk.text) if splitter is not None else chunk.text
                calls: list[ToolCall] = []
                finish = chunk.finish_reason
                if finish and splitter is not None:
                    rest, calls = splitter.finish()
                    content += rest
                    if calls:
                        finish = FINISH_TOOL_CALLS
                out.append(
                    ChatChunk(
                        chunk.index,
                        content,
                        chunk.tokens,
                        "assistant" if first else "",
                        calls,
                        finish,
                        chunk.matched_stop,
                    )
                )
            yield out

    async def collect(self) -> list[ChatResult]:
        results = []
        for seq in await self.generation.collect():
            splitter = self._split()
            content, calls = seq.text, []
            if splitter is not None:
                content = splitter.feed(seq.text)
                rest, calls = splitter.finish()
                content += rest
            finish = FINISH_TOOL_CALLS if calls else seq.finish_reason
            results.append(ChatResult(seq.index, content, calls, seq.tokens, finish, seq.matched_stop))
        return results
