"""Calibration data: token-id files, text/JSON/JSONL datasets in the usual layouts, and cutting samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cairn.common.errors import InvalidArgument
from cairn.services.quantizer import calibration


@pytest.fixture(scope="module")
def tokenizer(source: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def test_token_ids_as_json_lists_or_separated_ids(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("[1, 2, 3]\n\n4 5 6 7\n8,9\n")
    assert calibration.read_token_ids(path) == [[1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize(
    ("content", "message"),
    [("1 2 x\n", r"ids.txt:1: not a JSON list"), ("[1, -2]\n", r"ids.txt:1: token ids must be non-negative"),
     ("\n\n", "no token ids")],
)  # fmt: skip
def test_bad_token_id_files_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "ids.txt"
    path.write_text(content)
    with pytest.raises(InvalidArgument, match=message):
        calibration.read_token_ids(path)


def test_jsonl_layouts(tmp_path: Path, tokenizer) -> None:
    records = [
        {"text": "plain text"},
        {"prompt": "Q?", "completion": "A."},
        {"instruction": "Do it", "input": "", "output": "Done"},
        {"src": ["a", "b"], "tgt": "c"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"conversations": [{"from": "human", "value": "yo"}, {"from": "gpt", "value": "hey"}]},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    documents = calibration.read_documents(path, tokenizer)
    assert documents[:4] == ["plain text", "Q?\nA.", "Do it\nDone", "a\nb\nc"]
    # Chats go through the model's chat template.
    assert "hi" in documents[4] and "hello" in documents[4] and documents[4] != "hi\nhello"
    assert "yo" in documents[5] and "hey" in documents[5]


def test_json_lists_and_plain_text(tmp_path: Path, tokenizer) -> None:
    listed = tmp_path / "data.json"
    listed.write_text(json.dumps(["one", {"text": "two"}]))
    assert calibration.read_documents(listed, tokenizer) == ["one", "two"]
    plain = tmp_path / "book.txt"
    plain.write_text("A whole book.\n\nIn paragraphs.")
    assert calibration.read_documents(plain, tokenizer) == ["A whole book.\n\nIn paragraphs."]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\n{"nope": 1}\n', r"bad.jsonl:2: no text field"),
        ("bad.jsonl", '{"text": "ok"}\n{broken\n', r"bad.jsonl:2: not valid JSON"),
        ("bad.json", '{"text": "x"}', "must hold a list"),
        ("bad.jsonl", '{"messages": [{"speaker": "x"}]}\n', "role/content"),
        ("empty.txt", "   \n", "no text in it"),
    ],
)
def test_bad_datasets_say_where(tmp_path: Path, tokenizer, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidArgument, match=message):
        calibration.read_documents(path, tokenizer)


def test_tokenize_adds_eos_and_cut_takes_consecutive_windows(tokenizer) -> None:
    sequences = calibration.tokenize(["hello world", "again"], tokenizer)
    assert all(s[-1] == tokenizer.eos_token_id for s in sequences)
    stream = [t for s in sequences for t in s]
    windows = calibration.cut(sequences, 3, 100)
    assert windows.shape == (len(stream) // 3, 3)
    assert windows.flatten().tolist() == stream[: windows.numel()]
    held_out = calibration.cut(sequences, 2, 1, skip_tokens=3)
    assert held_out.tolist() == [stream[3:5]]
    assert calibration.cut(sequences, len(stream) + 1, 5).shape == (0, len(stream) + 1)
