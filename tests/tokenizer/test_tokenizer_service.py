"""The gRPC service on loopback: every RPC through the async client, bad input on every RPC, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loopback import Served
from tokenizer_harness import SyncClient

from cairn.cli import build_parser
from cairn.common.config import load_config
from cairn.common.errors import InvalidArgument, NotFound
from cairn.services.registry.client import RegistryClient
from cairn.services.tokenizer.config import TokenizerConfig
from cairn.services.tokenizer.records import ChatInput, DetokenizeState, StreamStep
from cairn.v1 import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc


def ref(model: Path | str) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(ref=str(model))


def test_encode_and_decode_round_trip(client: SyncClient, model_a: Path, hf_a: Any) -> None:
    text = "Grüße aus 東京 🗼!"
    chat = ChatInput([{"role": "user", "content": text}])
    plain, rendered = client.encode(str(model_a), [text, chat])
    assert plain.token_ids == hf_a(text)["input_ids"]
    assert rendered.rendered == hf_a.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    assert client.decode(str(model_a), plain.token_ids, skip_special_tokens=True) == text
    [cut] = client.encode(
        str(model_a), [text], max_length=3, truncation_side="left", add_special_tokens=False
    )
    assert cut.truncated and cut.token_ids == hf_a(text, add_special_tokens=False)["input_ids"][-3:]


def test_info(client: SyncClient, model_a: Path) -> None:
    info = client.info(str(model_a))
    assert (info.vocab_size, info.bos_token_id, info.eos_token_ids) == (2048, 0, (4, 1))
    assert info.has_chat_template and info.supports_tools


def test_stream_through_the_service(client: SyncClient, model_a: Path, model_b: Path, hf_a: Any) -> None:
    from transformers import AutoTokenizer

    hf_b = AutoTokenizer.from_pretrained(str(model_b))
    texts = {"a": "你好 😀 world", "b": "naïve café 👍🏽"}
    ids = {"a": hf_a(texts["a"], add_special_tokens=False)["input_ids"]}
    ids["b"] = hf_b(texts["b"], add_special_tokens=False)["input_ids"]
    models = {"a": str(model_a), "b": str(model_b)}
    states = {k: DetokenizeState() for k in texts}
    out = {k: "" for k in texts}
    for step in range(max(len(v) for v in ids.values())):
        steps = [
            StreamStep(
                models[k], ids[k][step : step + 1], states[k], final=step == len(ids[k]) - 1, stream_id=k
            )
            for k in texts
            if step < len(ids[k])
        ]
        for result in client.detokenize_batch(steps):
            assert "\ufffd" not in result.text
            states[result.stream_id] = result.state
            out[result.stream_id] += result.text
    assert out == texts


def test_registry_alias_moves_are_seen_at_once(
    client: SyncClient, registry: RegistryClient, model_a: Path, model_b: Path, model_name: str
) -> None:
    registry.push_dir(model_a, model_name, aliases=["production"])
    registry.push_dir(model_b, model_name)
    alias = f"{model_name}@production"
    assert client.info(alias).model == f"{model_name}@1"
    [encoding] = client.encode(alias, ["hello"])
    assert client.decode(alias, encoding.token_ids) == "<|begin_of_text|>hello"
    registry.set_alias(model_name, "production", 2)
    assert client.info(alias).model == f"{model_name}@2"
    assert client.info(alias).vocab_size == 512


def test_client_raises_typed_errors(client: SyncClient, model_a: Path) -> None:
    with pytest.raises(InvalidArgument, match="token id 99999 is outside"):
        client.decode(str(model_a), [99999])
    with pytest.raises(NotFound):
        client.info("no-such-model@1")


def chat(**fields: Any) -> tokenizer_pb2.ChatInput:
    return tokenizer_pb2.ChatInput(messages=[common_pb2.ChatMessage(role="user", content="hi")], **fields)


def bad_requests(model: str) -> list[tuple[str, Any, grpc.StatusCode, str]]:
    """(method, request, expected code, text the message must hold)."""
    m = ref(model)
    text = [tokenizer_pb2.EncodeInput(text="hello")]
    stream = tokenizer_pb2.DetokenizeStream
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    return [
        ("Encode", tokenizer_pb2.EncodeRequest(inputs=text), invalid, "model is required"),
        ("Encode", tokenizer_pb2.EncodeRequest(model=ref("bad name!"), inputs=text), invalid, "malformed"),
        ("Encode", tokenizer_pb2.EncodeRequest(model=ref("nobody@1"), inputs=text), not_found, "nobody"),
        ("Encode", tokenizer_pb2.EncodeRequest(model=ref("/no/such/dir"), inputs=text), not_found, "exist"),
        ("Encode", tokenizer_pb2.EncodeRequest(model=m), invalid, "inputs is empty"),
        (
            "Encode",
            tokenizer_pb2.EncodeRequest(model=m, inputs=[tokenizer_pb2.EncodeInput()]),
            invalid,
            "neither text nor chat",
        ),
        (
            "Encode",
            tokenizer_pb2.EncodeRequest(model=m, inputs=text, truncation_side=7),
            invalid,
            "truncation_side",
        ),
        (
            "Encode",
            tokenizer_pb2.EncodeRequest(model=m, inputs=text, max_length=1),
            invalid,
            "leaves no room",
        ),
        (
            "Encode",
            tokenizer_pb2.EncodeRequest(
                model=m, inputs=[tokenizer_pb2.EncodeInput(chat=tokenizer_pb2.ChatInput())]
            ),
            invalid,
            "no messages",
        ),
        (
            "Encode",
            tokenizer_pb2.EncodeRequest(
                model=m, inputs=[tokenizer_pb2.EncodeInput(chat=chat(chat_template="{% if %}"))]
            ),
            invalid,
            "syntax error",
        ),
        (
            "Encode",
            tokenizer_pb2.EncodeRequest(
                model=m,
                inputs=[
                    tokenizer_pb2.EncodeInput(
                        chat=chat(
                            tools=[
                                common_pb2.Tool(
                                    type="function",
                                    function=common_pb2.FunctionDefinition(name="f", parameters_json="{oops"),
                                )
                            ]
                        )
                    )
                ],
            ),
            invalid,
            "parameters_json is not valid JSON",
        ),
        ("Decode", tokenizer_pb2.DecodeRequest(token_ids=[1]), invalid, "model is required"),
        (
            "Decode",
            tokenizer_pb2.DecodeRequest(model=ref("nobody@latest"), token_ids=[1]),
            not_found,
            "nobody",
        ),
        ("Decode", tokenizer_pb2.DecodeRequest(model=m), invalid, "token_ids is empty"),
        ("Decode", tokenizer_pb2.DecodeRequest(model=m, token_ids=[5, 2048]), invalid, "token id 2048"),
        ("DetokenizeBatch", tokenizer_pb2.DetokenizeBatchRequest(), invalid, "streams is empty"),
        (
            "DetokenizeBatch",
            tokenizer_pb2.DetokenizeBatchRequest(streams=[stream(new_token_ids=[1])]),
            invalid,
            "model is required",
        ),
        (
            "DetokenizeBatch",
            tokenizer_pb2.DetokenizeBatchRequest(streams=[stream(model=ref("x y"), new_token_ids=[1])]),
            invalid,
            "malformed",
        ),
        (
            "DetokenizeBatch",
            tokenizer_pb2.DetokenizeBatchRequest(streams=[stream(model=ref("nobody@2"), new_token_ids=[1])]),
            not_found,
            "nobody",
        ),
        (
            "DetokenizeBatch",
            tokenizer_pb2.DetokenizeBatchRequest(
                streams=[stream(model=m, new_token_ids=[1]), stream(model=m, new_token_ids=[70000])]
            ),
            invalid,
            "streams[1]: token id 70000",
        ),
        (
            "DetokenizeBatch",
            tokenizer_pb2.DetokenizeBatchRequest(
                streams=[
                    stream(
                        model=m,
                        new_token_ids=[1],
                        state=tokenizer_pb2.DetokenizeState(context_token_ids=[1], read_offset=9),
                    )
                ]
            ),
            invalid,
            "do not fit",
        ),
        ("GetTokenizerInfo", tokenizer_pb2.TokenizerInfoRequest(), invalid, "model is required"),
        ("GetTokenizerInfo", tokenizer_pb2.TokenizerInfoRequest(model=ref("a@b@c")), invalid, "malformed"),
        ("GetTokenizerInfo", tokenizer_pb2.TokenizerInfoRequest(model=ref("nobody")), not_found, "nobody"),
    ]


def test_bad_input_on_every_rpc(
    stub: tokenizer_pb2_grpc.TokenizerStub, tokenizer_server: Served, model_a: Path
) -> None:
    cases = bad_requests(str(model_a))
    methods = {name for name, *_ in cases}
    assert methods == set(tokenizer_pb2.DESCRIPTOR.services_by_name["Tokenizer"].methods_by_name)
    for method, request, code, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            getattr(stub, method)(request, timeout=30)
        assert info.value.code() == code, (method, request, info.value.details())
        assert message in info.value.details(), (method, info.value.details())
    # None of it hurt the service.
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(tokenizer_server.address))
    status = health.Check(health_pb2.HealthCheckRequest(service="cairn.v1.Tokenizer"), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    response = stub.Decode(tokenizer_pb2.DecodeRequest(model=ref(model_a), token_ids=[0]), timeout=30)
    assert response.text == "<|begin_of_text|>"


def test_config_defaults_and_sources() -> None:
    config = load_config(TokenizerConfig, env={})
    assert (config.port, config.metrics_port) == (50052, 9092)
    assert config.registry_address == "127.0.0.1:50055"
    env = {"CAIRN_TOKENIZER_REGISTRY_ADDRESS": "", "CAIRN_TOKENIZER_PRELOAD": "[a@1, b@production]"}
    config = load_config(TokenizerConfig, ["--max-cached-tokenizers", "3", "--no-allow-local-dirs"], env=env)
    assert config.registry_address == ""
    assert config.preload == ["a@1", "b@production"]
    assert config.max_cached_tokenizers == 3 and not config.allow_local_dirs


def test_cairn_tokenizer_serve(model_a: Path, tmp_path: Path) -> None:
    args = build_parser().parse_args(["tokenizer", "serve", "--port", "0"])
    assert callable(args.func)
    env = {**os.environ, "CAIRN_TOKENIZER_CACHE_DIR": str(tmp_path), "CAIRN_TOKENIZER_REGISTRY_ADDRESS": ""}
    process = subprocess.Popen(
        [sys.executable, "-m", "cairn.cli", "tokenizer", "serve", "--port", "0", "--metrics-port", "0",
         "--log-format", "text", "--preload", f"[{model_a}]"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "serving cairn.v1.Tokenizer on " in line:
                address = line.rsplit(" on ", 1)[1].split()[0]
                break
        else:
            pytest.fail(f"the server exited with {process.wait()} before serving")
        with grpc.insecure_channel(address) as channel:
            stub = tokenizer_pb2_grpc.TokenizerStub(channel)
            info = stub.GetTokenizerInfo(tokenizer_pb2.TokenizerInfoRequest(model=ref(model_a)), timeout=30)
        assert info.vocab_size == 2048
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
