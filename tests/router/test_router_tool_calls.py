"""Tool calls in the Llama 3.1 JSON style: policy checks, parsing, and splitting a streamed answer."""

from __future__ import annotations

import json

import pytest

from cairn.common.errors import InvalidArgument
from cairn.services.router.tool_calls import ToolCallStream, parse_tool_calls, tool_policy

TOOLS = [
    {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "time", "description": "now"}},
]
NAMES = frozenset({"weather", "time"})


def test_calls_joined_by_semicolons_parse_with_parameters_or_arguments() -> None:
    weather = '{"name": "weather", "parameters": {"city": "Zürich"}}'
    time = '{"name": "time", "arguments": "{\\"tz\\": 1}"}'
    text = f" {weather}; {time} "
    calls = parse_tool_calls(text, NAMES)
    assert [(c.name, json.loads(c.arguments_json)) for c in calls] == [
        ("weather", {"city": "Zürich"}),
        ("time", {"tz": 1}),
    ]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)


@pytest.mark.parametrize(
    "text",
    [
        "It is sunny.",
        '{"name": "unknown", "parameters": {}}',
        '{"name": "weather", "parameters": [1]}',
        '{"name": "weather", "parameters": {}} and then text',
        '{"name": "weather", "parameters": {',
        "",
    ],
)
def test_anything_else_is_content(text: str) -> None:
    assert parse_tool_calls(text, NAMES) is None


def test_stream_passes_content_through_once_it_cannot_be_a_call() -> None:
    stream = ToolCallStream(tool_policy(TOOLS, "auto"))
    assert stream.feed("  ") == ""
    assert stream.feed("Hi") == "  Hi"
    assert stream.feed(" there") == " there"
    assert stream.finish() == ("", [])


def test_stream_holds_a_call_until_the_end() -> None:
    stream = ToolCallStream(tool_policy(TOOLS, "auto"))
    assert stream.feed('{"name": "time", ') == ""
    assert stream.feed('"parameters": {}}') == ""
    content, calls = stream.finish()
    assert content == "" and [c.name for c in calls] == ["time"]


def test_held_text_that_is_no_call_comes_back_as_content() -> None:
    stream = ToolCallStream(tool_policy(TOOLS, "auto"))
    stream.feed("{not json")
    assert stream.finish() == ("{not json", [])


def test_a_forced_function_is_completed_from_its_prefix() -> None:
    policy = tool_policy(TOOLS, "", "weather")
    assert policy.forced_prefix == '{"name": "weather", "parameters":'
    stream = ToolCallStream(policy)
    stream.feed(' {"city": "Oslo"}}')
    content, calls = stream.finish()
    assert (
        content == ""
        and calls[0].name == "weather"
        and json.loads(calls[0].arguments_json) == {"city": "Oslo"}
    )
    failed = ToolCallStream(policy)
    failed.feed(" nonsense")
    assert failed.finish() == (" nonsense", [])


@pytest.mark.parametrize(
    ("tools", "choice", "function", "message"),
    [
        ([], "auto", "", "needs tools"),
        (TOOLS, "sometimes", "", "tool_choice must be"),
        (TOOLS, "", "missing", "not among the tools"),
        ([{"type": "retrieval"}], "", "", "only tools of type 'function'"),
        ([{"type": "function", "function": {"name": "bad name"}}], "", "", "letters, digits"),
        ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], "", "", "JSON Schema object"),
        ([TOOLS[0], TOOLS[0]], "", "", "duplicate"),
    ],
)
def test_bad_policies_are_refused(tools: list, choice: str, function: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        tool_policy(tools, choice, function)


def test_default_choice_is_auto_with_tools_and_none_without() -> None:
    assert tool_policy(TOOLS, "").mode == "auto" and tool_policy(TOOLS, "").active
    assert tool_policy([], "").mode == "none" and not tool_policy([], "").active
    assert not tool_policy(TOOLS, "none").active
