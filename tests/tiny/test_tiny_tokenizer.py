"""The tiny tokenizer: byte-level BPE that round-trips any text and learned multi-byte merges."""

# Full-width punctuation in CJK text is intended.
# ruff: noqa: RUF001

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cairn.tiny.tokenizer import SPECIAL_TOKENS

TEXTS = [
    "Hello, world! The scheduler reads the next batch.",
    "Le café est déjà prêt ; il fait très beau à Genève.",
    "Zażółć gęślą jaźń",
    "你好，世界！今天天气很好。",
    "こんにちは、世界！ 안녕하세요",
    "Привет, мир!",
    "مرحبا بالعالم",
    "emoji 😀👍🏽🇯🇵👩‍💻 and a family 👨‍👩‍👧",
    "  leading spaces, trailing spaces  ",
    "tabs\tand\nnewlines\n\n\r\nand a final newline\n",
    'def f(x: int) -> int:\n    return x ** 2  # "square"',
    "numbers 3.14159 1e-9 0xdeadbeef 1234567890",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trips_exactly(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    with_bos = tokenizer.encode(text)
    assert with_bos == [tokenizer.bos_token_id, *ids]
    assert tokenizer.decode(with_bos, skip_special_tokens=True) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=64))
def test_round_trips_arbitrary_unicode(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("text", ["你好", "世界", "Привет", "café", "مرحبا", "😀"])
def test_learned_merges_inside_multibyte_characters(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    # Fewer tokens than UTF-8 bytes: BPE merged bytes within characters.
    assert len(tokenizer.encode(text, add_special_tokens=False)) < len(text.encode())


def test_some_tokens_end_inside_a_character(tokenizer: PreTrainedTokenizerBase) -> None:
    # Incremental detokenization has to hold such tokens back; make sure they exist.
    ids = tokenizer.encode("👍🏽 你好 Привет", add_special_tokens=False)
    pieces = [tokenizer.convert_tokens_to_string([t]) for t in tokenizer.convert_ids_to_tokens(ids)]
    assert any("\ufffd" in piece for piece in pieces)


def test_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer.pad_token == "<|pad|>"
    for token in SPECIAL_TOKENS:
        assert tokenizer.encode(f"a{token}b", add_special_tokens=False)[1] == tokenizer.convert_tokens_to_ids(
            token
        )
    assert tokenizer.decode(tokenizer.encode("hi<|eot_id|>"), skip_special_tokens=True) == "hi"


def test_vocabulary_fills_the_requested_size(tokenizer: PreTrainedTokenizerBase) -> None:
    assert len(tokenizer) == 2048
    assert tokenizer.model_max_length == 2048


def test_newline_pair_is_one_token(tokenizer: PreTrainedTokenizerBase) -> None:
    # The chat template puts "\n\n" after every header.
    assert len(tokenizer.encode("\n\n", add_special_tokens=False)) == 1


def test_config_files_use_the_published_layout(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|pad|>",
    )
    assert config["model_max_length"] == 2048
    assert config["clean_up_tokenization_spaces"] is False
    assert "<|start_header_id|>" in config["chat_template"]
    assert {v["content"] for v in config["added_tokens_decoder"].values()} == set(SPECIAL_TOKENS)
    special_map = json.loads((tiny_model_dir / "special_tokens_map.json").read_text())
    assert {k: v["content"] for k, v in special_map.items()} == {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|pad|>",
    }
    raw = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    assert raw["model"]["type"] == "BPE"
    assert raw["decoder"]["type"] == "ByteLevel"
    assert [p["type"] for p in raw["pre_tokenizer"]["pretokenizers"]] == ["Split", "ByteLevel"]
