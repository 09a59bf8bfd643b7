"""cairn.v1.Inference end to end: router -> tokenizer -> scheduler -> Ray worker, over loopback gRPC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from router_harness import Router, scheduler_stats, wait_idle
from transformers import AutoTokenizer

from cairn.services.worker.sampling_params import SamplingParams
from cairn.v1 import common_pb2, inference_pb2, inference_pb2_grpc

PROMPTS = [f"Tell me story number {i}:" for i in range(8)]


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def chat_ids(hf: Any, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
    """transformers' own rendering of a chat, tokenized as the template's text (specials included)."""
    return hf.encode(hf.apply_chat_template(messages, tokenize=False, **kwargs), add_special_tokens=False)


def options(**fields: Any) -> inference_pb2.GenerationOptions:
    """GenerationOptions from flat keywords: sampling fields, stop fields and the rest."""
    sampling_fields = set(common_pb2.SamplingParams.DESCRIPTOR.fields_by_name)
    stop_fields = set(common_pb2.StopCriteria.DESCRIPTOR.fields_by_name)
    sampling = {k: v for k, v in fields.items() if k in sampling_fields}
    stop = {k: v for k, v in fields.items() if k in stop_fields}
    rest = {k: v for k, v in fields.items() if k not in sampling_fields | stop_fields}
    return inference_pb2.GenerationOptions(
        sampling=common_pb2.SamplingParams(**sampling), stop=common_pb2.StopCriteria(**stop), **rest
    )


def generate(
    stub: inference_pb2_grpc.InferenceStub, prompt: str | list[int], model: str = "tiny", **fields: Any
):
    request = inference_pb2.GenerateRequest(model=model, options=options(**fields))
    if isinstance(prompt, str):
        request.text = prompt
    else:
        request.token_ids.ids.extend(prompt)
    return request


def test_list_models_names_every_deployment(
    stub: inference_pb2_grpc.InferenceStub, tiny_model_dir: Path
) -> None:
    models = {m.id: m for m in stub.ListModels(inference_pb2.ListServedModelsRequest()).models}
    assert set(models) == {"tiny", "tiny-short"}
    assert models["tiny"].max_model_len == 2048 and models["tiny-short"].max_model_len == 128
    assert models["tiny"].source == str(tiny_model_dir) and models["tiny"].created > 0


def test_greedy_outputs_equal_the_in_process_engine(
    stub: inference_pb2_grpc.InferenceStub, engine: Any, hf: Any
) -> None:
    prompt_ids = [hf.encode(p) for p in PROMPTS]
    expected = engine.generate(prompt_ids, SamplingParams(temperature=0.0, max_tokens=24))
    for ids, want in zip(prompt_ids, expected, strict=True):
        [got] = stub.Generate(generate(stub, ids, temperature=0.0, max_tokens=24)).completions
        assert [t.id for t in got.tokens] == want.outputs[0].token_ids
        assert got.text == hf.decode(want.outputs[0].token_ids, skip_special_tokens=True)
    # A text prompt is tokenized the way the engine's own tokenizer does it.
    [got] = stub.Generate(generate(stub, PROMPTS[0], temperature=0.0, max_tokens=24)).completions
    assert [t.id for t in got.tokens] == expected[0].outputs[0].token_ids


def test_stream_deltas_add_up_to_the_unary_answer_and_usage_comes_last(
    stub: inference_pb2_grpc.InferenceStub,
) -> None:
    request = generate(stub, PROMPTS[1], temperature=0.0, max_tokens=20, n=2, seed=3)
    unary = stub.Generate(request)
    messages = list(stub.GenerateStream(request))
    assert all(not m.HasField("usage") for m in messages[:-1])
    assert not messages[-1].deltas and messages[-1].usage == unary.usage
    for completion in unary.completions:
        deltas = [d for m in messages for d in m.deltas if d.index == completion.index]
        assert "".join(d.text for d in deltas) == completion.text
        assert [t.id for d in deltas for t in d.tokens] == [t.id for t in completion.tokens]
        assert deltas[-1].finish_reason == completion.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
    tokenized = stub.Tokenize(inference_pb2.TokenizeRequest(model="tiny", text=PROMPTS[1]))
    assert unary.usage.prompt_tokens == len(tokenized.token_ids)
    assert unary.usage.completion_tokens == sum(len(c.tokens) for c in unary.completions)
    assert unary.usage.total_tokens == unary.usage.prompt_tokens + unary.usage.completion_tokens


def test_characters_split_across_tokens_stream_whole(stub: inference_pb2_grpc.InferenceStub, hf: Any) -> None:
    split_seen = 0
    for i in (3, 4, 5, 12):
        request = generate(stub, f"Tell me story number {i}:", temperature=0.0, max_tokens=40)
        deltas = [d for m in stub.GenerateStream(request) for d in m.deltas]
        ids = [t.id for d in deltas for t in d.tokens]
        alone = [hf.decode([t]) for t in ids]
        full = hf.decode(ids, skip_special_tokens=True)
        # A character split across tokens: its pieces decode to U+FFFD alone, not together.
        split_seen += full.count("\ufffd") < sum(t.count("\ufffd") for t in alone)
        assert "".join(d.text for d in deltas) == full
    assert split_seen, "no prompt produced a character split across tokens; pick other prompts"


def stop_inside(tokens: list[common_pb2.Token]) -> tuple[str, int]:
    """A stop string made of the end of one token and the start of the next (ASCII, non-blank)."""
    for k in range(2, len(tokens) - 1):
        left, right = tokens[k].text, tokens[k + 1].text
        if len(left) >= 2 and len(right) >= 2 and (left + right).isascii() and (left + right).strip():
            return left[-2:] + right[:2], k
    raise AssertionError("no two neighbouring ASCII tokens in the greedy output")


def test_stop_string_across_tokens_ends_the_text_before_it_and_aborts_the_request(
    router: Router, stub: inference_pb2_grpc.InferenceStub
) -> None:
    prompt = PROMPTS[2]
    [free] = stub.Generate(
        generate(stub, prompt, temperature=0.0, max_tokens=60, ignore_eos=True)
    ).completions
    stop, k = stop_inside(list(free.tokens))
    cut = free.text.index(stop)
    before = scheduler_stats(router.runtime.config.deployments["tiny"][0]).generated_tokens

    # Far more tokens asked for than the stop needs: only an abort ends the request early.
    request = generate(stub, prompt, temperature=0.0, max_tokens=1500, ignore_eos=True, stop=[stop])
    messages = list(stub.GenerateStream(request))
    deltas = [d for m in messages for d in m.deltas]
    assert "".join(d.text for d in deltas) == free.text[:cut]
    assert (
        deltas[-1].finish_reason == common_pb2.FINISH_REASON_STOP_STRING and deltas[-1].matched_stop == stop
    )
    assert [t.id for d in deltas for t in d.tokens] == [t.id for t in free.tokens[: k + 2]]
    assert messages[-1].usage.completion_tokens == k + 2

    stats = wait_idle(router.runtime.config.deployments["tiny"][0])
    assert stats.generated_tokens - before < 1500

    request.options.stop.include_stop_str_in_output = True
    [kept] = stub.Generate(request).completions
    assert kept.text == free.text[:cut] + stop and kept.matched_stop == stop


def test_echo_returns_the_prompt_and_its_logprobs(stub: inference_pb2_grpc.InferenceStub, hf: Any) -> None:
    prompt = "Echo this back"
    request = generate(stub, prompt, temperature=0.0, max_tokens=5, logprobs=2)
    request.echo = True
    response = stub.Generate(request)
    [completion] = response.completions
    assert completion.text.startswith(prompt) and len(completion.text) > len(prompt)
    ids = hf.encode(prompt)
    assert [t.id for t in response.prompt_tokens] == ids
    assert not response.prompt_tokens[0].HasField("logprob")
    assert all(t.HasField("logprob") and len(t.top_logprobs) == 2 for t in response.prompt_tokens[1:])
    assert [t.text for t in response.prompt_tokens[1:]] == [hf.decode([i]) for i in ids[1:]]

    by_ids = generate(stub, ids, temperature=0.0, max_tokens=5)
    by_ids.echo = True
    [echoed] = stub.Generate(by_ids).completions
    assert echoed.text == completion.text


def test_logprobs_name_the_chosen_token_and_its_alternatives(
    stub: inference_pb2_grpc.InferenceStub, hf: Any
) -> None:
    [completion] = stub.Generate(
        generate(stub, PROMPTS[3], temperature=0.0, max_tokens=8, logprobs=3)
    ).completions
    assert len(completion.tokens) == 8
    for token in completion.tokens:
        assert token.HasField("logprob") and len(token.top_logprobs) == 3
        best = token.top_logprobs[0]
        # Greedy takes the most likely token; logprobs are of the raw distribution.
        assert best.token_id == token.id and best.logprob == pytest.approx(token.logprob)
        assert [a.logprob for a in token.top_logprobs] == sorted(
            (a.logprob for a in token.top_logprobs), reverse=True
        )
        assert token.text == hf.decode([token.id])
        assert all(
            a.text == hf.decode([a.token_id]) and a.text_bytes == a.text.encode() for a in token.top_logprobs
        )
    [plain] = stub.Generate(generate(stub, PROMPTS[3], temperature=0.0, max_tokens=8)).completions
    assert all(not t.HasField("logprob") and not t.top_logprobs for t in plain.tokens)


def test_seeded_sampling_repeats(stub: inference_pb2_grpc.InferenceStub) -> None:
    request = generate(stub, PROMPTS[4], temperature=1.0, top_p=0.9, max_tokens=16, seed=1234, n=3)
    first, second = stub.Generate(request), stub.Generate(request)
    assert [c.text for c in first.completions] == [c.text for c in second.completions]
    assert len({c.text for c in first.completions}) > 1


def test_best_of_returns_the_n_most_likely(stub: inference_pb2_grpc.InferenceStub) -> None:
    request = generate(stub, PROMPTS[5], temperature=1.0, max_tokens=8, seed=7, n=2, best_of=4, logprobs=0)
    response = stub.Generate(request)
    assert [c.index for c in response.completions] == [0, 1]
    with pytest.raises(grpc.RpcError) as error:
        list(stub.GenerateStream(request))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "best_of" in error.value.details()


def test_chat_with_a_system_prompt_and_tools_renders_the_model_template(
    stub: inference_pb2_grpc.InferenceStub, hf: Any
) -> None:
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "call_1"},
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    request = inference_pb2.ChatRequest(
        model="tiny",
        messages=[
            common_pb2.ChatMessage(role="system", content="You answer briefly."),
            common_pb2.ChatMessage(role="user", content="Weather in Paris?"),
            common_pb2.ChatMessage(
                role="assistant",
                tool_calls=[
                    common_pb2.ToolCall(
                        id="call_1", type="function", name="weather", arguments_json='{"city": "Paris"}'
                    )
                ],
            ),
            common_pb2.ChatMessage(role="tool", content='{"celsius": 21}', tool_call_id="call_1"),
        ],
        tools=[
            common_pb2.Tool(
                type="function",
                function=common_pb2.FunctionDefinition(
                    name="weather",
                    description="current weather",
                    parameters_json='{"type": "object", "properties": {"city": {"type": "string"}}}',
                ),
            )
        ],
        options=options(temperature=0.0, max_tokens=12),
    )
    expected = chat_ids(hf, messages, tools=tools, add_generation_prompt=True)
    response = stub.Chat(request)
    assert response.usage.prompt_tokens == len(expected)
    [choice] = response.choices
    assert choice.message.role == "assistant" and choice.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED

    # Without tools the system prompt still leads, and Tokenize renders exactly what Chat sends.
    plain = messages[:2]
    tokenized = stub.Tokenize(
        inference_pb2.TokenizeRequest(
            model="tiny", chat=inference_pb2.ChatMessages(messages=request.messages[:2])
        )
    )
    assert list(tokenized.token_ids) == chat_ids(hf, plain, add_generation_prompt=True)
    assert "".join(tokenized.tokens).startswith("<|begin_of_text|><|start_header_id|>system")


def test_forced_tool_choice_starts_the_answer_with_the_call(
    stub: inference_pb2_grpc.InferenceStub, hf: Any
) -> None:
    tool = common_pb2.Tool(
        type="function",
        function=common_pb2.FunctionDefinition(name="lookup", description="finds", parameters_json="{}"),
    )
    request = inference_pb2.ChatRequest(
        model="tiny",
        messages=[common_pb2.ChatMessage(role="user", content="find it")],
        tools=[tool],
        tool_choice=inference_pb2.ToolChoice(function_name="lookup"),
        options=options(temperature=0.0, max_tokens=6),
    )
    response = stub.Chat(request)
    rendered = chat_ids(
        hf,
        [
            {"role": "user", "content": "find it"},
            {"role": "assistant", "content": '{"name": "lookup", "parameters":'},
        ],
        tools=[
            {"type": "function", "function": {"name": "lookup", "description": "finds", "parameters": {}}}
        ],
        continue_final_message=True,
    )
    assert response.usage.prompt_tokens == len(rendered)
    request.tool_choice.function_name = "missing"
    with pytest.raises(grpc.RpcError) as error:
        stub.Chat(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lookup" in error.value.details()


def test_chat_stream_opens_each_answer_with_the_assistant_role(
    stub: inference_pb2_grpc.InferenceStub,
) -> None:
    request = inference_pb2.ChatRequest(
        model="tiny",
        messages=[common_pb2.ChatMessage(role="user", content="Hello!")],
        options=options(temperature=0.0, max_tokens=10, n=2),
    )
    unary = stub.Chat(request)
    messages = list(stub.ChatStream(request))
    for choice in unary.choices:
        deltas = [d for m in messages for d in m.deltas if d.index == choice.index]
        assert deltas[0].role == "assistant" and all(not d.role for d in deltas[1:])
        assert "".join(d.content for d in deltas) == choice.message.content
    assert messages[-1].usage == unary.usage


def test_concurrent_streams_share_detokenize_calls(
    router: Router, stub: inference_pb2_grpc.InferenceStub
) -> None:
    import concurrent.futures

    detokenizer = router.runtime.detokenizer
    before = detokenizer.calls
    request = generate(stub, PROMPTS[6], temperature=0.0, max_tokens=20, ignore_eos=True)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        streams = list(pool.map(lambda _: list(stub.GenerateStream(request)), range(16)))
    messages = sum(len([m for m in s if m.deltas]) for s in streams)
    assert len({"".join(d.text for m in s for d in m.deltas) for s in streams}) == 1
    assert detokenizer.calls - before < messages
