"""Adapters offline: `LLM.generate(..., adapter=...)` and `cairn batch` lines with an "adapter",
mixed with the base model, give the PEFT-merged HF model's greedy tokens; an adapter that does
not fit fails its own prompt only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lora_serving_harness import hf_greedy, make_peft_adapter

from cairn.cli import main
from cairn.common.errors import InvalidArgument
from cairn.services.scheduler.offline import LLM, BatchRequest
from cairn.services.worker.sampling_params import SamplingParams

PROMPTS = [[5, 17, 300, 41, 9, 77], [1000, 2, 2, 45, 88, 90, 7], [11, 12, 13, 14, 15]]
ENGINE = {"device": "cpu", "dtype": "float32", "block_size": 4, "max_model_len": 128, "num_blocks": 256}


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("offline-adapters")
    return {
        "a": make_peft_adapter(tiny_model_dir, root / "a", r=4, targets=["q_proj", "up_proj"], seed=30),
        "b": make_peft_adapter(
            tiny_model_dir, root / "b", r=8, targets=["k_proj", "v_proj", "o_proj"], seed=31
        ),
    }


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> Iterator[LLM]:
    with LLM(str(tiny_model_dir), max_loras=1, max_lora_rank=8, **ENGINE) as engine:
        yield engine


def test_generate_runs_each_prompt_with_its_adapter(
    llm: LLM, tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    chosen = [str(adapters["a"]), "", str(adapters["b"])]
    results = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=8), adapter=chosen)
    for prompt, adapter, result in zip(PROMPTS, chosen, results, strict=True):
        want = hf_greedy(tiny_model_dir, Path(adapter) if adapter else None, prompt, 8)
        assert result.outputs[0].token_ids == want, adapter
    with pytest.raises(InvalidArgument, match="3 prompts but 2 adapters"):
        llm.generate(PROMPTS, adapter=chosen[:2])


def test_an_adapter_that_does_not_fit_fails_only_its_prompt(
    llm: LLM, tiny_model_dir: Path, tiny_model_factory: Any, adapters: dict[str, Path], tmp_path: Path
) -> None:
    other = tiny_model_factory(hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
    narrow = make_peft_adapter(other, tmp_path / "narrow", r=4, targets=["q_proj"], seed=32)
    params = SamplingParams(temperature=0.0, max_tokens=4)
    requests = [BatchRequest(PROMPTS[0], params, adapter=str(narrow)), BatchRequest(PROMPTS[1], params)]
    results = dict(llm.results(requests))
    assert isinstance(results[0], InvalidArgument) and "different base model" in results[0].message
    assert results[1].outputs[0].token_ids == hf_greedy(tiny_model_dir, None, PROMPTS[1], 4)


def test_cairn_batch_lines_name_their_adapter(
    tiny_model_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    lines = [
        {"id": "a", "prompt_token_ids": PROMPTS[0], "adapter": str(adapters["a"])},
        {"id": "base", "prompt_token_ids": PROMPTS[1]},
        {"id": "b", "prompt_token_ids": PROMPTS[2], "adapter": str(adapters["b"])},
        {"id": "bad", "prompt_token_ids": PROMPTS[2], "adapter": 7},
    ]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    engine = [f"--{k.replace('_', '-')}={v}" for k, v in ENGINE.items()]
    argv = ["batch", "--model", str(tiny_model_dir), "--input", str(source), "--output", str(out)]
    argv += ["--max-tokens", "6", "--temperature", "0", "--max-loras", "2", "--no-progress", *engine]
    assert main(argv) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for record, prompt, adapter in zip(records, PROMPTS, (adapters["a"], None, adapters["b"]), strict=False):
        assert record["outputs"][0]["token_ids"] == hf_greedy(tiny_model_dir, adapter, prompt, 6)
    assert '"adapter" must be a string' in records[3]["error"]
