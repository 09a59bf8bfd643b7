"""The official `openai` client against the router's HTTP API, on the real stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from router_harness import Router
from transformers import AutoTokenizer

from cairn.services.worker.sampling_params import SamplingParams

PROMPT = "Once upon a time"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def client(router: Router) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{router.http_url}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_models_lists_the_deployments(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny", "tiny-short"}
    assert models["tiny"].owned_by == "cairn" and models["tiny"].object == "model"


def test_greedy_completion_equals_the_in_process_engine(client: openai.OpenAI, engine: Any, hf: Any) -> None:
    [want] = engine.generate([hf.encode(PROMPT)], SamplingParams(temperature=0.0, max_tokens=20))
    tokens = want.outputs[0].token_ids
    response = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0)
    [choice] = response.choices
    assert choice.text == hf.decode(tokens, skip_special_tokens=True)
    assert choice.finish_reason == ("length" if len(tokens) == 20 else "stop")
    assert response.object == "text_completion" and response.id.startswith("cmpl-")
    assert response.model == "tiny" and response.system_fingerprint and response.created > 0
    assert response.usage.prompt_tokens == len(hf.encode(PROMPT))
    assert response.usage.completion_tokens == len(tokens)
    assert response.usage.total_tokens == response.usage.prompt_tokens + len(tokens)

    by_ids = client.completions.create(model="tiny", prompt=hf.encode(PROMPT), max_tokens=20, temperature=0)
    assert by_ids.choices[0].text == choice.text


def test_streamed_completion_adds_up_and_ends_with_usage(client: openai.OpenAI) -> None:
    args = {"model": "tiny", "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert all(c.usage is None for c in chunks[:-1])
    assert not chunks[-1].choices and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_n_completions_with_a_seed_repeat(client: openai.OpenAI) -> None:
    args = {"model": "tiny", "prompt": PROMPT, "max_tokens": 12, "temperature": 1.0, "n": 3, "seed": 42}
    first, second = client.completions.create(**args), client.completions.create(**args)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert len({c.text for c in first.choices}) > 1
    other = client.completions.create(**{**args, "seed": 43})
    assert [c.text for c in other.choices] != [c.text for c in first.choices]


def test_a_batch_of_prompts_numbers_choices_per_prompt(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model="tiny", prompt=["One", "Two"], max_tokens=4, n=2, temperature=0
    )
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    texts = [c.text for c in response.choices]
    assert texts[0] == texts[1] and texts[2] == texts[3]
    singles = [
        client.completions.create(model="tiny", prompt=p, max_tokens=4, temperature=0) for p in ["One", "Two"]
    ]
    assert [texts[0], texts[2]] == [s.choices[0].text for s in singles]
    assert response.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles) * 2


def test_completion_logprobs_and_echo(client: openai.OpenAI, hf: Any) -> None:
    response = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, echo=True
    )
    [choice] = response.choices
    lp = choice.logprobs
    prompt_ids = hf.encode(PROMPT)
    assert choice.text.startswith(PROMPT)
    assert len(lp.tokens) == len(prompt_ids) + 6 == len(lp.token_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and all(isinstance(x, float) for x in lp.token_logprobs[1:])
    for token, logprob, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert top[token] == pytest.approx(logprob) and 2 <= len(top) <= 3
    assert lp.text_offset == sorted(lp.text_offset)


def test_stop_strings_cut_the_completion(client: openai.OpenAI) -> None:
    free = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, extra_body={"ignore_eos": True}
    )
    text = free.choices[0].text
    stop = text[10:13]
    cut = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=30,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < free.usage.completion_tokens


def test_chat_completion_stream_and_not(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0, n=2)
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-")
    assert [c.index for c in whole.choices] == [0, 1]
    assert all(c.message.role == "assistant" and c.message.content for c in whole.choices)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=CHAT,
            max_tokens=12,
            temperature=0,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    for choice in whole.choices:
        deltas = [d for c in chunks for d in c.choices if d.index == choice.index]
        assert deltas[0].delta.role == "assistant"
        assert "".join(d.delta.content or "" for d in deltas) == choice.message.content
        assert deltas[-1].finish_reason == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_logprobs(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert entry.bytes == list(entry.token.encode())


def test_chat_with_tools_is_accepted_and_rendered(client: openai.OpenAI, hf: Any) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "the time in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    response = client.chat.completions.create(
        model="tiny", messages=CHAT, tools=tools, max_tokens=8, temperature=0
    )
    rendered = hf.apply_chat_template(CHAT, tools=tools, add_generation_prompt=True, tokenize=False)
    assert response.usage.prompt_tokens == len(hf.encode(rendered, add_special_tokens=False))
    assert response.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_errors_reach_the_client_typed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="x")
    assert "tiny" in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny", prompt="x", max_tokens=-3)
    assert "max_tokens" in bad.value.message
