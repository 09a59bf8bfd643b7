"""Acceptance on README command 1: `cairn up` serves the whole stack, and the official `openai` client
(completions and chat, streaming and not, n > 1, logprobs, stop, seed) and `cairn chat` work against
it; greedy outputs equal the in-process engine's on the same model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from cairn_up import cairn_up
from transformers import AutoTokenizer

from cairn.services.worker.sampling_params import SamplingParams

MODEL = "tiny-llama"
PROMPTS = ["Once upon a time", "The weather today is", "def main():"]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`cairn up` in a fresh home on free ports; the addresses its banner prints."""
    home = tmp_path_factory.mktemp("cairn-home")
    with cairn_up(home) as (addresses, banner):
        assert "curl http" in banner and "OpenAI(base_url=" in banner and "grpcurl -plaintext -d" in banner
        assert f"cairn chat --router {addresses['router']}" in banner
        yield {"router": addresses["router"], "openai": addresses["openai api"], "home": str(home)}


@pytest.fixture(scope="module")
def client(up: dict[str, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=up["openai"], api_key="none", max_retries=0, timeout=120) as c:
        yield c


def test_greedy_completions_and_chat_equal_the_in_process_engine(
    client: openai.OpenAI, engine: Any, tiny_model_dir: Path
) -> None:
    # `cairn up` builds the tiny model with the default arguments: the same files as the session's.
    hf = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    expected = engine.generate(
        [hf.encode(p) for p in PROMPTS], SamplingParams(temperature=0.0, max_tokens=24)
    )
    for prompt, want in zip(PROMPTS, expected, strict=True):
        ids = want.outputs[0].token_ids
        response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
        assert response.choices[0].text == hf.decode(ids, skip_special_tokens=True)
        assert response.usage.completion_tokens == len(ids)
        streamed = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in streamed) == response.choices[0].text

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    chat_ids = hf.encode(
        hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), add_special_tokens=False
    )
    [want] = engine.generate([chat_ids], SamplingParams(temperature=0.0, max_tokens=16))
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    assert answer.choices[0].message.content == hf.decode(want.outputs[0].token_ids, skip_special_tokens=True)
    assert answer.usage.prompt_tokens == len(chat_ids)
    chunks = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=16, temperature=0, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == answer.choices[0].message.content
    )


def test_n_seed_logprobs_and_stop(client: openai.OpenAI) -> None:
    args = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 12, "temperature": 1.0, "n": 3, "seed": 11}
    first, again = client.completions.create(**args), client.completions.create(**args)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]

    scored = client.completions.create(
        model=MODEL, prompt=PROMPTS[1], max_tokens=5, temperature=0, logprobs=3
    )
    lp = scored.choices[0].logprobs
    assert len(lp.tokens) == 5 and all(len(top) >= 3 for top in lp.top_logprobs)
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    assert len(chat.choices[0].logprobs.content) == 4

    free = client.completions.create(
        model=MODEL, prompt=PROMPTS[2], max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
    )
    stop = free.choices[0].text[8:11]
    cut = client.completions.create(
        model=MODEL,
        prompt=PROMPTS[2],
        max_tokens=24,
        temperature=0,
        stop=stop,
        extra_body={"ignore_eos": True},
    )
    assert cut.choices[0].text == free.choices[0].text[: free.choices[0].text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_cairn_chat_holds_a_conversation(up: dict[str, str]) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "cairn.cli",
            "chat",
            "--router",
            up["router"],
            "--max-tokens",
            "8",
            "--system",
            "Be brief.",
        ],
        input="Hello there\nAnd again\n/exit\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CAIRN_HOME": up["home"]},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"chatting with {MODEL}" in result.stdout
    answers = re.findall(r"assistant> (.*)", result.stdout)
    assert len(answers) == 2 and all(answers)
