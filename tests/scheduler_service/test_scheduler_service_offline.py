"""Offline inference: `LLM.generate` in this process and `cairn batch` over a JSONL file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from scheduler_service_harness import BLOCK_SIZE, MAX_MODEL_LEN, Reference, workload

from cairn.cli import main
from cairn.common.errors import InvalidArgument
from cairn.services.scheduler.offline import LLM, Prompt
from cairn.services.scheduler.sequence import FinishReason
from cairn.services.worker.sampling_params import SamplingParams

SPECS = workload(12, seed=5, max_tokens=(3, 12))
ENGINE = {
    "device": "cpu",
    "dtype": "float32",
    "block_size": BLOCK_SIZE,
    "max_model_len": MAX_MODEL_LEN,
    "num_blocks": 256,
    "max_num_seqs": 4,
    "max_num_batched_tokens": 32,
}


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> Iterator[LLM]:
    with LLM(str(tiny_model_dir), **ENGINE) as llm:
        yield llm


def test_generate_returns_each_prompt_s_greedy_tokens_in_order(llm: LLM, reference: Reference) -> None:
    params = [SamplingParams(temperature=0.0, max_tokens=s.max_tokens) for s in SPECS]
    results = llm.generate([s.prompt for s in SPECS], params)
    assert [r.outputs[0].token_ids for r in results] == reference(SPECS)
    assert [r.prompt_token_ids for r in results] == [s.prompt for s in SPECS]
    assert all(r.first_token_time is not None and r.arrival_time <= r.finish_time for r in results)
    # Prompts sharing a prefix reuse its blocks.
    assert sum(r.num_cached_tokens for r in results) > 0
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


def test_text_and_chat_prompts_go_through_the_model_s_tokenizer(llm: LLM) -> None:
    hf = llm.tokenizer.hf
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    text, chat = llm.generate(
        ["The sky is", Prompt(messages=[{"role": "user", "content": "Hi there"}])], params, n=2
    )
    assert text.prompt_token_ids == hf.encode("The sky is")
    rendered = hf.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.prompt_token_ids == hf.encode(rendered, add_special_tokens=False)
    for result in (text, chat):
        assert len(result.outputs) == 2 and result.outputs[0].token_ids == result.outputs[1].token_ids
        first = result.outputs[0]
        assert first.finish_reason is FinishReason.LENGTH and len(first.token_ids) == 6
        assert first.text == hf.decode(first.token_ids, skip_special_tokens=True)


def test_a_bad_prompt_is_reported_by_its_index(llm: LLM) -> None:
    with pytest.raises(InvalidArgument, match=r"prompt 1: .*max_model_len"):
        llm.generate([[5, 6], [5] * 250], SamplingParams(max_tokens=10))
    with pytest.raises(InvalidArgument, match="one of text, token_ids or messages"):
        Prompt(text="a", token_ids=[1])
    # Nothing of the refused batch is left behind.
    assert not llm.engine.scheduler.has_unfinished_requests()


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_cairn_batch_reports_bad_lines_by_number_and_runs_the_rest(
    tmp_path: Path, tiny_model_dir: Path, reference: Reference, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = SPECS[0]
    source = _write_lines(
        tmp_path / "prompts.jsonl",
        [
            json.dumps({"id": "ids", "prompt_token_ids": spec.prompt, "max_tokens": spec.max_tokens}),
            json.dumps({"prompt": "Once upon a time", "temperature": 0.8, "seed": 3}),
            "{not json",
            "",
            json.dumps({"messages": [{"role": "user", "content": "Hello"}], "n": 2}),
            json.dumps({"prompt": "x", "max_tokens": 0}),
            json.dumps({"prompt_token_ids": [7] * 300}),
            json.dumps({"prompt": "hi", "colour": "red"}),
        ],
    )
    out = tmp_path / "results.jsonl"
    engine_flags = ["--device", "cpu", "--dtype", "float32", "--block-size", "4", "--max-model-len", "256"]
    argv = ["batch", "--model", str(tiny_model_dir), "--input", str(source), "--output", str(out)]
    code = main([*argv, "--max-tokens", "5", "--temperature", "0", *engine_flags])
    err = capsys.readouterr().err

    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 5, 6, 7, 8]
    by_line = {r["line"]: r for r in records}
    assert by_line[1]["id"] == "ids"
    assert by_line[1]["outputs"][0]["token_ids"] == reference([spec])[0]
    assert len(by_line[2]["outputs"][0]["token_ids"]) == 5 and by_line[2]["outputs"][0]["text"]
    assert len(by_line[5]["outputs"]) == 2
    assert by_line[5]["usage"]["completion_tokens"] == sum(len(o["token_ids"]) for o in by_line[5]["outputs"])
    for number, message in [
        (3, "not valid JSON"),
        (6, "max_tokens must be >= 1"),
        (7, "max_model_len"),
        (8, "unknown fields ['colour']"),
    ]:
        assert message in by_line[number]["error"]
        assert f"line {number}: " in err
    assert "4 succeeded, 4 failed" not in err and "3 succeeded, 4 failed" in err
    assert "100%" in err, "no progress bar"


def test_cairn_batch_fails_when_no_line_can_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = _write_lines(tmp_path / "bad.jsonl", ["[1, 2]", '{"prompt_token_ids": "abc"}'])
    out = tmp_path / "out.jsonl"
    argv = ["batch", "--model", str(tiny_model_dir), "--input", str(source), "--output", str(out)]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 1
    errors = [json.loads(line)["error"] for line in out.read_text().splitlines()]
    assert errors == ["expected a JSON object, got list", '"prompt_token_ids" must be a list of integers']
    assert main([*argv[:-4], "--input", str(tmp_path / "missing.jsonl"), "--output", str(out)]) == 2
