"""Encode and Decode: ids match transformers, text round-trips (non-ASCII included), truncation, specials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cairn.common.errors import InvalidArgument
from cairn.services.tokenizer.core import TokenizerCore

TEXTS = [
    "Hello, world!",
    "héllo wörld — ça va?",
    "世界你好\uff0c今天天气很好\u3002",  # full-width punctuation
    "emoji 😀👍🏽 and flags 🇫🇷 mixed with 𝄞 music",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers_and_decodes_back(
    core: TokenizerCore, model_a: Path, hf_a: Any, text: str
) -> None:
    [with_bos] = core.encode(str(model_a), [text])
    [plain] = core.encode(str(model_a), [text], add_special_tokens=False)
    assert with_bos.token_ids == hf_a(text)["input_ids"]
    assert plain.token_ids == hf_a(text, add_special_tokens=False)["input_ids"]
    assert with_bos.token_ids[0] == hf_a.bos_token_id
    assert not with_bos.truncated and with_bos.rendered == ""
    assert core.decode(str(model_a), with_bos.token_ids, skip_special_tokens=True) == text
    if plain.token_ids:
        assert core.decode(str(model_a), plain.token_ids) == text


def test_encode_many_inputs_keeps_their_order(core: TokenizerCore, model_a: Path, hf_a: Any) -> None:
    encodings = core.encode(str(model_a), TEXTS, add_special_tokens=False)
    assert [e.token_ids for e in encodings] == [hf_a(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


def test_decode_skip_special_tokens(core: TokenizerCore, model_a: Path, hf_a: Any) -> None:
    ids = [hf_a.bos_token_id, *hf_a("hi there", add_special_tokens=False)["input_ids"], hf_a.eos_token_id]
    assert core.decode(str(model_a), ids) == "<|begin_of_text|>hi there<|eot_id|>"
    assert core.decode(str(model_a), ids, skip_special_tokens=True) == "hi there"
    assert core.decode(str(model_a), ids) == hf_a.decode(ids)


def test_truncation_right_keeps_the_start_and_bos(core: TokenizerCore, model_a: Path, hf_a: Any) -> None:
    text = "one two three four five six seven eight nine ten"
    full = hf_a(text, add_special_tokens=False)["input_ids"]
    [cut] = core.encode(str(model_a), [text], max_length=5)
    assert cut.truncated
    assert cut.token_ids == [hf_a.bos_token_id, *full[:4]]
    assert cut.token_ids == hf_a(text, truncation=True, max_length=5)["input_ids"]


def test_truncation_left_keeps_the_end_and_bos(core: TokenizerCore, model_a: Path, hf_a: Any) -> None:
    text = "one two three four five six seven eight nine ten"
    full = hf_a(text, add_special_tokens=False)["input_ids"]
    [cut] = core.encode(str(model_a), [text], max_length=5, truncation_side="left")
    assert cut.truncated
    assert cut.token_ids == [hf_a.bos_token_id, *full[-4:]]
    [plain] = core.encode(
        str(model_a), [text], max_length=3, truncation_side="left", add_special_tokens=False
    )
    assert plain.token_ids == full[-3:]


def test_truncation_only_when_over_the_limit(core: TokenizerCore, model_a: Path, hf_a: Any) -> None:
    text = "short"
    [exact] = core.encode(str(model_a), [text], max_length=len(hf_a(text)["input_ids"]))
    assert not exact.truncated
    assert exact.token_ids == hf_a(text)["input_ids"]


def test_max_length_must_leave_room_for_text(core: TokenizerCore, model_a: Path) -> None:
    with pytest.raises(InvalidArgument, match="leaves no room"):
        core.encode(str(model_a), ["some text"], max_length=1)
    [only_text] = core.encode(str(model_a), ["some text"], max_length=1, add_special_tokens=False)
    assert len(only_text.token_ids) == 1


def test_bad_encode_and_decode_arguments(core: TokenizerCore, model_a: Path) -> None:
    with pytest.raises(InvalidArgument, match="inputs is empty"):
        core.encode(str(model_a), [])
    with pytest.raises(InvalidArgument, match="max_length"):
        core.encode(str(model_a), ["x"], max_length=-1)
    with pytest.raises(InvalidArgument, match="truncation_side"):
        core.encode(str(model_a), ["x"], truncation_side="middle")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="token_ids is empty"):
        core.decode(str(model_a), [])
    with pytest.raises(InvalidArgument, match="token id 2048 is outside"):
        core.decode(str(model_a), [10, 2048])
    with pytest.raises(InvalidArgument, match="token id -1 is outside"):
        core.decode(str(model_a), [-1])


def test_byte_fallback_tokenizer_matches_transformers(
    core: TokenizerCore, byte_fallback_dir: Path, hf_byte_fallback: Any
) -> None:
    model, hf = str(byte_fallback_dir), hf_byte_fallback
    encodings = core.encode(model, TEXTS)
    assert [e.token_ids for e in encodings] == [hf(t)["input_ids"] for t in TEXTS]
    for encoding in encodings:
        decoded = core.decode(model, encoding.token_ids, skip_special_tokens=True)
        assert decoded == hf.decode(encoding.token_ids, skip_special_tokens=True)
    [cut] = core.encode(model, [TEXTS[3]], max_length=6, truncation_side="left")
    assert cut.token_ids == [hf.bos_token_id, *hf(TEXTS[3], add_special_tokens=False)["input_ids"][-5:]]
