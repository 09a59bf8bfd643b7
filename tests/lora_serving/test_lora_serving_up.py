"""`cairn up` serves LoRA adapters: a `--lora-modules` directory from the start and a registry
adapter pushed while it runs, through its Ray worker actor (LoadAdapter over gRPC), with the
greedy tokens of the PEFT-merged HF model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from cairn_up import cairn_up
from lora_serving_harness import hf_greedy, make_peft_adapter
from transformers import AutoTokenizer

from cairn.services.registry.client import RegistryClient

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def local_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("up-local")
    return make_peft_adapter(tiny_model_dir, out, r=4, targets=["q_proj", "o_proj", "up_proj"], seed=20)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, local_adapter: Path) -> Iterator[dict[str, str]]:
    """`cairn up` in a fresh home on free ports with one LoRA module; the addresses it prints."""
    home = tmp_path_factory.mktemp("cairn-home")
    with cairn_up(home, "--lora-modules", f"local={local_adapter}") as (addresses, banner):
        assert "any peft-adapter of tiny-llama@production in the registry, by name (4 at once)" in banner
        yield addresses


def test_cairn_up_serves_lora_modules_and_registry_adapters(
    up: dict[str, str], local_adapter: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # `cairn up` builds the tiny model with the default arguments: the same files as the session's.
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompt = tokenizer.encode(PROMPT)
    pushed = make_peft_adapter(
        tiny_model_dir, tmp_path / "pushed", r=8, targets=["v_proj", "down_proj"], seed=21
    )
    with RegistryClient(up["registry"]) as registry:
        registry.push_dir(pushed, "up-lora", format="peft-adapter", parents=["tiny-llama@1"])
    with openai.OpenAI(base_url=up["openai api"], api_key="none", max_retries=0, timeout=120) as client:
        for model, adapter in (("local", local_adapter), ("up-lora", pushed), ("tiny-llama", None)):
            response = client.completions.create(model=model, prompt=PROMPT, max_tokens=10, temperature=0)
            want = hf_greedy(tiny_model_dir, adapter, prompt, 10)
            assert response.choices[0].text == tokenizer.decode(want, skip_special_tokens=True), model
        parents = {m.id: m.parent for m in client.models.list()}
    assert parents == {"tiny-llama": None, "local": "tiny-llama", "up-lora": "tiny-llama"}
