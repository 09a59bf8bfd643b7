"""The tiny model's chat template: Llama 3 headers, system turns, tools, tool calls and results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cairn.tiny.tokenizer import chat_template

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 2 + 2?"},
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}


def header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_two_turns_with_system_prompt(tokenizer: PreTrainedTokenizerBase) -> None:
    expected = (
        "<|begin_of_text|>"
        f"{header('system')}You are terse.<|eot_id|>"
        f"{header('user')}Hi there!<|eot_id|>"
        f"{header('assistant')}Hello.<|eot_id|>"
        f"{header('user')}What is 2 + 2?<|eot_id|>"
    )
    assert render(tokenizer, CONVERSATION) == expected
    assert render(tokenizer, CONVERSATION, add_generation_prompt=True) == expected + header("assistant")


def test_generation_prompt_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    start, end, eot, bos = tokenizer.convert_tokens_to_ids(
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|begin_of_text|>"]
    )
    assert ids[0] == bos and ids.count(bos) == 1
    assert ids.count(start) == ids.count(end) == 5
    assert ids.count(eot) == 4
    newlines = tokenizer.encode("\n\n", add_special_tokens=False)
    assistant = tokenizer.encode("assistant", add_special_tokens=False)
    assert ids[-(len(assistant) + len(newlines) + 2) :] == [start, *assistant, end, *newlines]
    without = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    assert without[-1] == eot and ids[: len(without)] == without


def test_no_system_turn_without_system_prompt_or_tools(tokenizer: PreTrainedTokenizerBase) -> None:
    text = render(tokenizer, CONVERSATION[1:2])
    assert text == f"<|begin_of_text|>{header('user')}Hi there!<|eot_id|>"


def test_tools_are_rendered_into_the_system_turn(tokenizer: PreTrainedTokenizerBase) -> None:
    text = render(tokenizer, CONVERSATION, tools=[WEATHER_TOOL], add_generation_prompt=True)
    system_turn = text.split("<|eot_id|>")[0]
    assert system_turn.startswith(f"<|begin_of_text|>{header('system')}You are terse.\n\n")
    assert '{"name": function name, "parameters": dictionary' in system_turn
    assert json.dumps(WEATHER_TOOL, indent=4) in system_turn
    assert text.endswith(f"{header('user')}What is 2 + 2?<|eot_id|>{header('assistant')}")


def test_tools_without_system_prompt_still_open_a_system_turn(tokenizer: PreTrainedTokenizerBase) -> None:
    text = render(tokenizer, CONVERSATION[1:2], tools=[WEATHER_TOOL, WEATHER_TOOL])
    assert text.startswith(f"<|begin_of_text|>{header('system')}You have access to the following functions.")
    assert text.count('"name": "get_weather"') == 2
    assert text.count(header("system")) == 1


def test_tool_calls_and_results(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Zürich?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                # HF style: arguments as a dict; OpenAI style: arguments as a JSON string.
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Zürich", "unit": "C"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, cloudy"},
        {"role": "tool", "tool_call_id": "call_2", "content": {"temperature": 21, "sky": "clear"}},
    ]
    text = render(tokenizer, messages, tools=[WEATHER_TOOL], add_generation_prompt=True)
    calls = (
        '{"name": "get_weather", "parameters": {"city": "Paris"}}; '
        '{"name": "get_weather", "parameters": {"city": "Zürich", "unit": "C"}}'
    )
    assert f"{header('assistant')}{calls}<|eot_id|>" in text
    assert f"{header('ipython')}18 degrees, cloudy<|eot_id|>" in text
    assert f'{header("ipython")}{{"temperature": 21, "sky": "clear"}}<|eot_id|>' in text
    assert text.endswith(header("assistant"))


def test_assistant_text_before_tool_calls(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
        },
    ]
    text = render(tokenizer, messages)
    call = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    assert text.endswith(f"{header('assistant')}Let me check.\n\n{call}<|eot_id|>")


def test_content_parts_are_joined(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]},
    ]
    assert render(tokenizer, messages) == (
        f"<|begin_of_text|>{header('system')}Be kind.<|eot_id|>{header('user')}Hello world<|eot_id|>"
    )


def test_output_does_not_depend_on_renderer_whitespace_settings(tokenizer: PreTrainedTokenizerBase) -> None:
    # transformers renders with trim_blocks and lstrip_blocks; other renderers
    # (minijinja, a plain jinja2 Environment) do not. The template must not care.
    plain = ImmutableSandboxedEnvironment().from_string(chat_template())
    for messages in (CONVERSATION, CONVERSATION[1:]):
        for add_generation_prompt in (False, True):
            ours = plain.render(
                messages=messages, bos_token="<|begin_of_text|>", add_generation_prompt=add_generation_prompt
            )
            assert ours == render(tokenizer, messages, add_generation_prompt=add_generation_prompt)
