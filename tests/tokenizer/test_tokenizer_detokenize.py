"""Incremental detokenization: no broken character, deltas add up to the full decode, batches mix models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn.common.errors import InvalidArgument
from cairn.services.tokenizer.core import TokenizerCore
from cairn.services.tokenizer.detokenize import MAX_HELD_TOKENS, REPLACEMENT_CHAR
from cairn.services.tokenizer.records import CONTEXT_TOKENS, DetokenizeState, StreamResult, StreamStep

# Any character UTF-8 can carry except U+FFFD itself (the marker of an incomplete
# one), weighted towards multi-byte ones the tiny vocabulary splits into bytes.
CHARS = st.one_of(
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters=REPLACEMENT_CHAR),
    st.sampled_from(list("ab ,.\n世界😀é🇫🇷👍🏽")),
)


def byte_token_ids(hf: Any, data: bytes) -> list[int]:
    """One single-byte token per byte: how a byte-level BPE spells text it has no merges for."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = bytes_to_unicode()
    return [hf.convert_tokens_to_ids(alphabet[b]) for b in data]


def stream(
    core: TokenizerCore,
    model: str,
    chunks: Sequence[Sequence[int]],
    state: DetokenizeState | None = None,
    skip_special_tokens: bool = False,
) -> list[StreamResult]:
    """Feed `chunks` one call each, the last one final; the results in order."""
    results = []
    state = state or DetokenizeState()
    for i, chunk in enumerate(chunks):
        step = StreamStep(model, chunk, state, skip_special_tokens, final=i == len(chunks) - 1)
        [result] = core.detokenize_batch([step])
        results.append(result)
        state = result.state
    return results


def split(ids: list[int], sizes: list[int]) -> list[list[int]]:
    chunks, at = [], 0
    for size in sizes:
        if at >= len(ids):
            break
        chunks.append(ids[at : at + size])
        at += size
    if at < len(ids):
        chunks.append(ids[at:])
    return chunks


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(CHARS, min_size=1, max_size=24),
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=40),
    seeded=st.booleans(),
)
def test_deltas_never_break_a_character_and_add_up_to_the_full_decode(
    core: TokenizerCore, model_a: Path, hf_a: Any, text: str, sizes: list[int], seeded: bool
) -> None:
    ids = hf_a(text, add_special_tokens=False)["input_ids"]
    prompt = hf_a("Prompt: say it")["input_ids"]
    state = DetokenizeState.seeded(prompt) if seeded else None
    chunks = split(ids, sizes)
    results = stream(core, str(model_a), chunks, state)
    for result in results:
        assert REPLACEMENT_CHAR not in result.text
        # The last emitted tokens (the seed, at first) and those held after them.
        assert len(result.state.context_token_ids) <= CONTEXT_TOKENS + 2 * max(map(len, chunks)) + 3
    assert "".join(r.text for r in results) == hf_a.decode(ids) == text
    token_texts = [t for r in results for t in r.token_texts]
    assert token_texts == [hf_a.decode([t]) for t in ids]


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(CHARS, min_size=1, max_size=24),
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=40),
    seeded=st.booleans(),
)
def test_byte_fallback_stream_keeps_spaces_and_never_breaks_a_character(
    core: TokenizerCore,
    byte_fallback_dir: Path,
    hf_byte_fallback: Any,
    text: str,
    sizes: list[int],
    seeded: bool,
) -> None:
    hf = hf_byte_fallback
    ids = hf(text, add_special_tokens=False)["input_ids"]
    prompt = hf("Prompt: say it")["input_ids"] if seeded else []
    state = DetokenizeState.seeded(prompt) if seeded else None
    results = stream(core, str(byte_fallback_dir), split(ids, sizes), state, skip_special_tokens=True)
    for result in results:
        assert REPLACEMENT_CHAR not in result.text
    # In context, the first generated token keeps the space its decoder strips at a sequence start.
    prompt_text = hf.decode(prompt, skip_special_tokens=True)
    expected = hf.decode(prompt + ids, skip_special_tokens=True)[len(prompt_text) :]
    assert "".join(r.text for r in results) == expected


def test_byte_fallback_first_token_space_needs_the_prompt(
    core: TokenizerCore, byte_fallback_dir: Path, hf_byte_fallback: Any
) -> None:
    prompt = hf_byte_fallback("Say")["input_ids"]
    # Encoded alone the text gets the "▁" a SentencePiece tokenizer puts before every sequence.
    ids = hf_byte_fallback("world 世", add_special_tokens=False)["input_ids"]
    alone = stream(core, str(byte_fallback_dir), [[i] for i in ids])
    seeded = stream(core, str(byte_fallback_dir), [[i] for i in ids], DetokenizeState.seeded(prompt))
    assert "".join(r.text for r in alone) == "world 世"
    assert "".join(r.text for r in seeded) == " world 世"
    # 世 is three <0xNN> tokens; nothing shows until the last one.
    assert [r.text for r in seeded[-3:]] == ["", "", "世"]


def test_seed_cut_inside_a_character_still_decodes(
    core: TokenizerCore, byte_fallback_dir: Path, hf_byte_fallback: Any
) -> None:
    prompt = hf_byte_fallback("Say 世界")["input_ids"]
    # The last five prompt tokens begin inside 世: a run of byte tokens decoded
    # from there is invalid as a whole, so the stream must start its context later.
    assert hf_byte_fallback.convert_ids_to_tokens(prompt[-5:])[0] == "<0xB8>"
    # Generated right after 世界, without a space: byte tokens that continue the prompt's run.
    marker, *ids = hf_byte_fallback("界!", add_special_tokens=False)["input_ids"]
    assert hf_byte_fallback.convert_ids_to_tokens(marker) == "▁"
    results = stream(core, str(byte_fallback_dir), [[i] for i in ids], DetokenizeState.seeded(prompt))
    assert "".join(r.text for r in results) == "界!"
    assert all(REPLACEMENT_CHAR not in r.text for r in results)


def test_split_character_is_held_until_complete(core: TokenizerCore, model_a: Path, hf_a: Any) -> None:
    ids = byte_token_ids(hf_a, "a😀b".encode())
    assert len(ids) == 6
    results = stream(core, str(model_a), [[i] for i in ids])
    assert [r.text for r in results] == ["a", "", "", "", "😀", "b"]
    assert results[1].token_texts == [REPLACEMENT_CHAR]


def test_a_multi_token_step_emits_the_characters_it_completes(
    core: TokenizerCore, model_a: Path, hf_a: Any
) -> None:
    ids = byte_token_ids(hf_a, "ab😀".encode())
    results = stream(core, str(model_a), [ids[:4], ids[4:]])
    assert [r.text for r in results] == ["ab", "😀"]


def test_invalid_bytes_are_held_then_flushed_by_final(core: TokenizerCore, model_a: Path, hf_a: Any) -> None:
    ids = byte_token_ids(hf_a, b"ok\xff")
    results = stream(core, str(model_a), [ids, []])
    assert [r.text for r in results] == ["ok", REPLACEMENT_CHAR]
    assert "".join(r.text for r in results) == hf_a.decode(ids)


def test_an_endless_invalid_sequence_does_not_grow_the_state(
    core: TokenizerCore, model_a: Path, hf_a: Any
) -> None:
    ids = byte_token_ids(hf_a, b"\xf0\x9f" + b"\xff" * (3 * MAX_HELD_TOKENS) + "é".encode())
    results = stream(core, str(model_a), [[i] for i in ids])
    assert max(len(r.state.context_token_ids) for r in results) <= 2 * MAX_HELD_TOKENS + 2
    assert any(r.text for r in results[: 2 * MAX_HELD_TOKENS])
    assert "".join(r.text for r in results) == hf_a.decode(ids)


def test_skip_special_tokens(core: TokenizerCore, model_a: Path, hf_a: Any) -> None:
    ids = [
        *hf_a("Hi 世界", add_special_tokens=False)["input_ids"],
        hf_a.eos_token_id,
        *hf_a(" more", add_special_tokens=False)["input_ids"],
    ]
    chunks = [[i] for i in ids]
    kept = stream(core, str(model_a), chunks)
    skipped = stream(core, str(model_a), chunks, skip_special_tokens=True)
    assert "".join(r.text for r in kept) == "Hi 世界<|eot_id|> more"
    assert "".join(r.text for r in skipped) == "Hi 世界 more"
    # Token texts show every token, for logprobs, whatever the stream skips.
    assert [t for r in skipped for t in r.token_texts] == [hf_a.decode([i]) for i in ids]


def test_seeded_stream_does_not_repeat_the_prompt(core: TokenizerCore, model_a: Path, hf_a: Any) -> None:
    prompt = hf_a("The answer is")["input_ids"]
    state = DetokenizeState.seeded(prompt)
    assert state.context_token_ids == tuple(prompt[-CONTEXT_TOKENS:])
    answer = hf_a(" forty-two", add_special_tokens=False)["input_ids"]
    results = stream(core, str(model_a), [[i] for i in answer], state)
    assert "".join(r.text for r in results) == " forty-two"


def test_one_batch_of_many_streams_and_two_models_equals_separate_calls(
    core: TokenizerCore, model_a: Path, model_b: Path, hf_a: Any
) -> None:
    from transformers import AutoTokenizer

    hf_b = AutoTokenizer.from_pretrained(str(model_b))
    texts = ["plain words", "世界 and 😀👍🏽", "çà et là", "🇫🇷 flags", "x" * 9, "mixed 𝄞 notes"]
    streams = []
    for i, text in enumerate(texts * 2):
        model, hf = (str(model_a), hf_a) if i % 2 == 0 else (str(model_b), hf_b)
        ids = hf(text, add_special_tokens=False)["input_ids"]
        streams.append((f"s{i}", model, split(ids, [1 + i % 3] * len(ids)), i % 4 == 3))
    states = {sid: DetokenizeState() for sid, *_ in streams}
    emitted = {sid: "" for sid, *_ in streams}
    for step in range(max(len(chunks) for _, _, chunks, _ in streams)):
        steps = [
            StreamStep(model, chunks[step], states[sid], skip, final=step == len(chunks) - 1, stream_id=sid)
            for sid, model, chunks, skip in streams
            if step < len(chunks)
        ]
        batched = core.detokenize_batch(steps)
        alone = [core.detokenize_batch([s])[0] for s in steps]
        assert batched == alone
        assert [r.stream_id for r in batched] == [s.stream_id for s in steps]
        for result in batched:
            states[result.stream_id] = result.state
            emitted[result.stream_id] += result.text
    assert [emitted[sid] for sid, *_ in streams] == texts * 2


def test_bad_streams_are_invalid_argument(core: TokenizerCore, model_a: Path) -> None:
    model = str(model_a)
    with pytest.raises(InvalidArgument, match="streams is empty"):
        core.detokenize_batch([])
    with pytest.raises(InvalidArgument, match=r"streams\[1\] \('b'\): token id 5000 is outside"):
        core.detokenize_batch(
            [StreamStep(model, [1], stream_id="a"), StreamStep(model, [5000], stream_id="b")]
        )
    with pytest.raises(InvalidArgument, match="do not fit its 2 context tokens"):
        core.detokenize_batch([StreamStep(model, [1], DetokenizeState((10, 11), 0, 3))])
    with pytest.raises(InvalidArgument, match="do not fit"):
        core.detokenize_batch([StreamStep(model, [1], DetokenizeState((10, 11), 2, 1))])
    with pytest.raises(InvalidArgument, match="state: token id -4 is outside"):
        core.detokenize_batch([StreamStep(model, [1], DetokenizeState((-4,), 0, 1))])
