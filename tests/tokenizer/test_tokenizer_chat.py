"""Chat inputs: the model's template (system prompt, turns, tools), request templates, and their errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cairn.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cairn.services.tokenizer.convert import chat_from_proto, chat_to_proto
from cairn.services.tokenizer.core import TokenizerCore
from cairn.services.tokenizer.records import ChatInput

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Bonjour! Qu'est-ce que 世界?"},
    {"role": "assistant", "content": "It means 'world'."},
    {"role": "user", "content": "And 😀?"},
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_system_prompt_and_two_turns_render_like_transformers(
    core: TokenizerCore, model_a: Path, hf_a: Any
) -> None:
    [encoding] = core.encode(str(model_a), [ChatInput(CONVERSATION)])
    expected = hf_a.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert encoding.rendered == expected
    assert encoding.rendered.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert encoding.rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    # The rendered text carries its own BOS: exactly one, whatever add_special_tokens says.
    assert encoding.token_ids == hf_a(expected, add_special_tokens=False)["input_ids"]
    assert encoding.token_ids.count(hf_a.bos_token_id) == 1


def test_generation_prompt_can_be_left_out(core: TokenizerCore, model_a: Path) -> None:
    [open_turn] = core.encode(str(model_a), [ChatInput(CONVERSATION)])
    [closed] = core.encode(str(model_a), [ChatInput(CONVERSATION, add_generation_prompt=False)])
    assert closed.rendered.endswith("And 😀?<|eot_id|>")
    assert open_turn.rendered == closed.rendered + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_tools_are_rendered_into_the_system_turn(core: TokenizerCore, model_a: Path, hf_a: Any) -> None:
    [encoding] = core.encode(str(model_a), [ChatInput(CONVERSATION, tools=[WEATHER_TOOL])])
    expected = hf_a.apply_chat_template(
        CONVERSATION, tools=[WEATHER_TOOL], tokenize=False, add_generation_prompt=True
    )
    assert encoding.rendered == expected
    assert '"name": "get_weather"' in encoding.rendered
    assert "You have access to the following functions" in encoding.rendered


def test_tool_calls_and_results_survive_the_wire_format(core: TokenizerCore, model_a: Path) -> None:
    chat = ChatInput(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                    }
                ],
            },
            {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": "call_1"},
        ],
        tools=[WEATHER_TOOL],
    )
    through_wire = chat_from_proto(chat_to_proto(chat))
    assert through_wire == chat
    [encoding] = core.encode(str(model_a), [through_wire])
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in encoding.rendered
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp_c": 21}<|eot_id|>' in encoding.rendered


def test_continue_final_message_leaves_the_answer_open(core: TokenizerCore, model_a: Path) -> None:
    prefill = [*CONVERSATION, {"role": "assistant", "content": "It is a smiley"}]
    [encoding] = core.encode(str(model_a), [ChatInput(prefill, continue_final_message=True)])
    assert encoding.rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nIt is a smiley")
    with pytest.raises(InvalidArgument, match="exclude each other"):
        core.encode(
            str(model_a), [ChatInput(prefill, continue_final_message=True, add_generation_prompt=True)]
        )


def test_request_template_replaces_the_models(core: TokenizerCore, model_a: Path) -> None:
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{{ eos_token }}"
    [encoding] = core.encode(str(model_a), [ChatInput(CONVERSATION[1:3], chat_template=template)])
    assert (
        encoding.rendered == "[user] Bonjour! Qu'est-ce que 世界?\n[assistant] It means 'world'.\n<|eot_id|>"
    )


def test_chat_truncation_keeps_the_end(core: TokenizerCore, model_a: Path) -> None:
    [full] = core.encode(str(model_a), [ChatInput(CONVERSATION)])
    [cut] = core.encode(str(model_a), [ChatInput(CONVERSATION)], max_length=8, truncation_side="left")
    assert cut.truncated
    assert cut.token_ids == full.token_ids[-8:]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for m in messages %}{{ m.content }", "syntax error at line 1"),
        ("{{ raise_exception('roles must alternate user/assistant') }}", "roles must alternate"),
        ("{{ messages[7].content.upper() }}", "chat template error"),
    ],
)
def test_template_errors_are_invalid_argument_with_the_jinja_message(
    core: TokenizerCore, model_a: Path, template: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        core.encode(str(model_a), ["plain", ChatInput(CONVERSATION, chat_template=template)])
    assert info.value.message.startswith("inputs[1]: ")


def test_bad_messages_are_invalid_argument(core: TokenizerCore, model_a: Path) -> None:
    with pytest.raises(InvalidArgument, match="no messages"):
        core.encode(str(model_a), [ChatInput([])])
    with pytest.raises(InvalidArgument, match=r"messages\[1\] has no role"):
        core.encode(str(model_a), [ChatInput([{"role": "user", "content": "a"}, {"content": "b"}])])


def test_model_without_template_needs_one_in_the_request(
    core: TokenizerCore, copy_tokenizer: Callable[[], Path]
) -> None:
    bare = copy_tokenizer()
    config_path = bare / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    info = core.info(str(bare))
    assert not info.has_chat_template and not info.supports_tools
    with pytest.raises(FailedPrecondition, match="has no chat template; pass one in chat_template"):
        core.encode(str(bare), [ChatInput(CONVERSATION)])
    [encoding] = core.encode(str(bare), [ChatInput(CONVERSATION, chat_template="{{ messages[0].content }}")])
    assert encoding.rendered == "You are terse."


def test_request_templates_can_be_refused(core: TokenizerCore, model_a: Path) -> None:
    strict = TokenizerCore(core.loader, allow_request_chat_template=False)
    with pytest.raises(PermissionDenied, match="allow_request_chat_template"):
        strict.encode(str(model_a), [ChatInput(CONVERSATION, chat_template="{{ 1 }}")])
    [encoding] = strict.encode(str(model_a), [ChatInput(CONVERSATION)])
    assert encoding.rendered.startswith("<|begin_of_text|>")
