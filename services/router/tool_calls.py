"""Function calling in the Llama 3.1 JSON style, for chat templates that render tools.

The template lists the tools in the system turn; the model calls them by
answering with `{"name": ..., "parameters": {...}}` objects joined by "; "
("arguments" is accepted for "parameters"). A forced tool choice is applied
by starting the assistant turn with the opening of such an object, so the
model can only continue it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cairn.common.errors import InvalidArgument

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True)
class ToolPolicy:
    """The tools a chat offers and how the model may use them.

    `mode` is "none", "auto", "required" or "function" (call `function`).
    """

    tools: tuple[Mapping[str, Any], ...] = ()
    mode: str = "none"
    function: str = ""

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.mode != "none"

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t["function"]["name"] for t in self.tools)

    @property
    def forced_prefix(self) -> str:
        """The start of the assistant's answer when a call is forced; empty otherwise."""
        if self.mode == "function":
            return '{"name": ' + json.dumps(self.function) + ', "parameters":'
        if self.mode == "required":
            return '{"name": "'
        return ""


def tool_policy(tools: Sequence[Mapping[str, Any]], choice: str, function: str = "") -> ToolPolicy:
    """Validate OpenAI-shaped `tools` and a choice ("" means the default: auto with tools, else none)."""
    for i, tool in enumerate(tools):
        spec = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(spec, Mapping):
            raise InvalidArgument(
                f"tools[{i}]: only tools of type 'function' with a function definition exist"
            )
        name = spec.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            raise InvalidArgument(
                f"tools[{i}].function.name must be 1-64 letters, digits, '_' or '-', got {name!r}"
            )
        parameters = spec.get("parameters", {})
        if not isinstance(parameters, Mapping):
            raise InvalidArgument(f"tools[{i}].function.parameters must be a JSON Schema object")
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"tools has duplicate function names: {sorted(names)}")
    if function:
        if function not in names:
            raise InvalidArgument(
                f"tool_choice names function {function!r}, which is not among the tools: {sorted(names)}"
            )
        return ToolPolicy(tuple(tools), "function", function)
    mode = choice or ("auto" if tools else "none")
    if mode not in ("none", "auto", "required"):
        raise InvalidArgument(f"tool_choice must be 'none', 'auto', 'required' or a function, got {mode!r}")
    if mode != "none" and not tools:
        raise InvalidArgument(f"tool_choice {mode!r} needs tools; none were given")
    return ToolPolicy(tuple(tools), mode)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def parse_tool_calls(text: str, names: frozenset[str]) -> list[ToolCall] | None:
    """The calls when the whole of `text` is one or more calls to functions in `names`, else None."""
    calls = []
    pos = _skip_space(text, 0)
    if pos == len(text):
        return None
    while pos < len(text):
        try:
            obj, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        call = _as_call(obj, names)
        if call is None:
            return None
        calls.append(call)
        pos = _skip_space(text, pos)
        if pos < len(text):
            if text[pos] != ";":
                return None
            pos = _skip_space(text, pos + 1)
    return calls


def _as_call(obj: Any, names: frozenset[str]) -> ToolCall | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    arguments = obj.get("parameters", obj.get("arguments", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), obj["name"], json.dumps(arguments, ensure_ascii=False))


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


class ToolCallStream:
    """Splits one streamed answer into content and tool calls.

    Content streams as it comes until the answer could be a call (it starts
    with "{", or a call is forced); from there on the text is held and parsed
    when the answer ends: calls if it parses as calls, else content after all.
    """

    def __init__(self, policy: ToolPolicy) -> None:
        self._names = policy.names
        self._prefix = policy.forced_prefix
        self._held = self._prefix
        self._mode = "call" if self._prefix else "undecided"

    def feed(self, text: str) -> str:
        """Content that may be sent now."""
        if self._mode == "content":
            return text
        self._held += text
        if self._mode == "undecided":
            stripped = self._held.lstrip()
            if not stripped:
                return ""
            if stripped.startswith("{"):
                self._mode = "call"
                return ""
            self._mode = "content"
            held, self._held = self._held, ""
            return held
        return ""

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The rest of the content and the calls, once the answer has ended."""
        held, self._held = self._held, ""
        if self._mode != "call":
            return held, []
        calls = parse_tool_calls(held, self._names)
        if calls is None:
            # A forced prefix the model did not complete into a call is not its own text.
            return held[len(self._prefix) :], []
        return "", calls
