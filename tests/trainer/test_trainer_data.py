"""Dataset layouts, chat-template encoding with assistant-only labels, packing and batch order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from cairn.common.errors import DataLoss, InvalidArgument, NotFound
from cairn.jobs.datasets import fetch, sha256_of
from cairn.services.trainer.data.batches import Schedule, collate, eval_micro_batches
from cairn.services.trainer.data.encode import FALLBACK_TEMPLATE, IGNORE, Encoder, Sample
from cairn.services.trainer.data.examples import Conversation, Document, Message, Preference
from cairn.services.trainer.data.packing import pack
from cairn.services.trainer.data.prepare import prepare
from cairn.services.trainer.data.reader import read_examples
from cairn.services.trainer.jobfile import spec_from_yaml
from cairn.services.trainer.modeling import load_tokenizer
from cairn.services.trainer.plan import DatasetFormat, plan_from_spec

U = Message("user", "hi")
A = Message("assistant", "hello", train=True)


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return load_tokenizer(tiny_model_dir)


@pytest.mark.parametrize(
    ("record", "fmt", "expected"),
    [
        ({"src": "hi", "tgt": "hello"}, DatasetFormat.SRC_TGT, Conversation((U, A))),
        (
            {"src": ["a", "b"], "tgt": ["x", "y"], "system": "s"},
            DatasetFormat.SRC_TGT,
            Conversation(
                (
                    Message("system", "s"),
                    Message("user", "a"),
                    Message("assistant", "x", True),
                    Message("user", "b"),
                    Message("assistant", "y", True),
                )
            ),
        ),
        (
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            DatasetFormat.CONVERSATIONS,
            Conversation((U, A)),
        ),
        (
            {"instruction": "Sum", "input": "1 2", "output": "3", "history": [["q", "r"]]},
            DatasetFormat.ALPACA,
            Conversation(
                (
                    Message("user", "q"),
                    Message("assistant", "r", True),
                    Message("user", "Sum\n\n1 2"),
                    Message("assistant", "3", True),
                )
            ),
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": "no", "weight": 0},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                ]
            },
            DatasetFormat.MESSAGES,
            Conversation((U, Message("assistant", "no"), U, A)),
        ),
        (
            {"src": ["q1", "q2"], "tgt": ["a1"], "response": ["bad", "good"], "sort": [0, 2]},
            DatasetFormat.DPO_SRC_TGT,
            Preference(
                (Message("user", "q1"), Message("assistant", "a1"), Message("user", "q2")), "good", "bad"
            ),
        ),
        (
            {"prompt": "hi", "chosen": [{"role": "assistant", "content": "yes"}], "rejected": "no"},
            DatasetFormat.DPO_PAIRS,
            Preference((U,), "yes", "no"),
        ),
        ({"text": "raw words"}, DatasetFormat.TEXT, Document("raw words")),
    ],
)
def test_every_layout_is_detected_and_read(
    tmp_path: Path, record: dict, fmt: DatasetFormat, expected: object
) -> None:
    path = _write(tmp_path / "d.jsonl", [record, record])
    detected, examples = read_examples(path, DatasetFormat.AUTO)
    assert detected == fmt and examples == [expected, expected]
    assert read_examples(path, fmt) == (fmt, [expected, expected])


CHAT = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
BAD_ROLE = (
    "d.jsonl line 2: messages[0].role 'bot' is not one of system, user, assistant, tool (messages format)"
)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([CHAT, "", '{"messages": ['], "d.jsonl line 3: not valid JSON"),
        ([CHAT, {"messages": [{"role": "bot", "content": "a"}]}], BAD_ROLE),
        ([{"src": ["a", "b"], "tgt": ["x"]}], "line 1: src has 2 turns but tgt has 1"),
        ([{"src": ["a"], "tgt": [], "response": ["x", "y"], "sort": [1, 1]}], "sort must be two different"),
        ([{"messages": [{"role": "user", "content": "a question"}]}], "has no assistant turn to learn from"),
        ([{"question": "?"}], "cannot tell the dataset format from the keys ['question']"),
        ([{"instruction": "x", "output": 3}], "line 1: output must be a string, got int"),
        ([["not", "an", "object"]], "line 1: expected a JSON object, got list"),
        (["", "  "], "d.jsonl holds no examples"),
    ],
)
def test_malformed_lines_fail_with_their_line_number(tmp_path: Path, lines: list, message: str) -> None:
    path = _write(tmp_path / "d.jsonl", lines)
    with pytest.raises(InvalidArgument) as raised:
        read_examples(path, DatasetFormat.AUTO)
    assert message in raised.value.message


def test_plain_text_files_are_one_document(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("Once upon a time.\n")
    assert read_examples(path, DatasetFormat.AUTO) == (DatasetFormat.TEXT, [Document("Once upon a time.\n")])


def _labelled(tokenizer: Any, sample: Sample) -> str:
    return tokenizer.decode([t for t in sample.labels if t != IGNORE])


def test_only_assistant_turns_are_labelled(tokenizer: Any) -> None:
    encoder = Encoder(tokenizer, 512)
    conversation = Conversation(
        (Message("system", "be brief"), Message("user", "capital of France?"),
         Message("assistant", "Paris.", train=True), Message("user", "and Italy?"),
         Message("assistant", "Skipped.", train=False), Message("user", "Spain?"),
         Message("assistant", "Madrid.", train=True))
    )  # fmt: skip
    sample = encoder.conversation(conversation)
    assert _labelled(tokenizer, sample) == "Paris.<|eot_id|>Madrid.<|eot_id|>"
    rendered = tokenizer.apply_chat_template(
        [m.for_template() for m in conversation.messages], return_dict=True
    )
    assert sample.input_ids == rendered["input_ids"]
    assert sample.labels[0] == IGNORE and len(sample.labels) == len(sample.input_ids)
    pair = encoder.preference(Preference((Message("user", "q"),), "good answer", "bad"))
    assert (_labelled(tokenizer, pair.chosen), _labelled(tokenizer, pair.rejected)) == (
        "good answer<|eot_id|>",
        "bad<|eot_id|>",
    )
    short = Encoder(tokenizer, 12).conversation(conversation)
    assert len(short) == 12 and short.input_ids == sample.input_ids[:12] and short.num_labels == 0


def test_documents_are_cut_into_max_length_pieces(tokenizer: Any) -> None:
    pieces = Encoder(tokenizer, 16).document(Document("the quick brown fox jumps over the lazy dog " * 6))
    assert len(pieces) > 2 and all(len(p) <= 16 for p in pieces)
    whole = [t for p in pieces for t in p.input_ids]
    assert whole[0] == tokenizer.bos_token_id and whole[-1] == tokenizer.eos_token_id
    assert all(p.labels == [IGNORE, *p.input_ids[1:]] for p in pieces)


def test_tokenizers_without_a_template_get_the_fallback(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = None
    sample = Encoder(tokenizer, 512).conversation(Conversation((U, A)))
    assert tokenizer.chat_template == FALLBACK_TEMPLATE
    assert tokenizer.decode(sample.input_ids) == (
        "<|begin_of_text|>### User:\nhi\n\n### Assistant:\nhello<|eot_id|>\n\n"
    )
    assert _labelled(tokenizer, sample) == "hello<|eot_id|>\n\n"


def test_packing_keeps_every_token_and_restarts_positions() -> None:
    samples = [Sample(list(range(n)), [IGNORE, *range(1, n)]) for n in (5, 9, 3, 7, 2, 6)]
    rows = pack(samples, 10)
    assert all(len(r) <= 10 for r in rows) and len(rows) == 4
    assert sorted(t for r in rows for t in r.input_ids) == sorted(t for s in samples for t in s.input_ids)
    for row in rows:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]  # type: ignore[arg-type]
        assert all(row.labels[i] == IGNORE for i in starts)
        assert row.position_ids == [p for s in _segments(row.position_ids) for p in range(s)]  # type: ignore[arg-type]
    assert pack(samples, 10) == rows

    batch = collate(rows[:2], pad_id=99)
    assert batch.attention_mask is None and batch.position_ids is not None
    width = batch.input_ids.shape[1]
    padded = len(rows[1])
    assert batch.position_ids[1, padded:].tolist() == list(range(width - padded))
    assert batch.num_tokens == len(rows[0]) + len(rows[1])


def _segments(positions: list[int]) -> list[int]:
    sizes = []
    for p in positions:
        if p == 0:
            sizes.append(0)
        sizes[-1] += 1
    return sizes


def test_batch_order_is_a_pure_function_of_the_step() -> None:
    schedule = Schedule(num_items=10, micro_batch_size=2, accumulation=2, world_size=2, seed=7)
    assert (
        schedule.steps_per_epoch == 2
        and schedule.total_steps(1.5, 0) == 3
        and schedule.total_steps(1, 5) == 5
    )
    epoch = [schedule.micro_batches(step, rank) for step in range(2) for rank in range(2)]
    seen = [i for micro in epoch for batch in micro for i in batch]
    assert set(seen) == set(range(10)) and len(seen) == 16  # padded by wrapping to 2 steps x 2 ranks x 2
    assert schedule.micro_batches(1, 1) == Schedule(10, 2, 2, 2, 7).micro_batches(1, 1)
    assert schedule.micro_batches(2, 0) != schedule.micro_batches(0, 0)  # a new epoch reshuffles
    rounds = [eval_micro_batches(5, 2, 2, rank) for rank in range(2)]
    assert rounds[0] == [([0, 1], True), ([4], True)] and rounds[1] == [([2, 3], True), ([0, 1], False)]


def test_prepare_splits_checks_digests_and_drops_unlearnable(tmp_path: Path, tokenizer: Any) -> None:
    records = [{"src": f"question {i}", "tgt": f"answer {i}"} for i in range(8)]
    records.append({"src": "word " * 200, "tgt": "too late"})
    path = _write(tmp_path / "d.jsonl", records)
    spec = {"base_model": "t", "method": "sft", "dataset": {"uri": str(path), "eval_split": 0.25},
            "args": {"max_length": 64}}  # fmt: skip
    plan = plan_from_spec(spec_from_yaml(spec))
    data = prepare(plan, Path, tokenizer)
    assert data.format == DatasetFormat.SRC_TGT and data.sha256 == sha256_of(path)
    assert len(data.train) + len(data.eval) == 8 and len(data.eval) == 2  # the long prompt is dropped
    again = prepare(plan, Path, tokenizer)
    assert [r.input_ids for r in again.eval] == [r.input_ids for r in data.eval]  # type: ignore[union-attr]
    bad = {**spec, "dataset": {"uri": str(path), "sha256": "0" * 64}}
    with pytest.raises(DataLoss, match="has sha256"):
        prepare(plan_from_spec(spec_from_yaml(bad)), Path, tokenizer)
    dpo = {**spec, "method": "dpo", "dataset": {"uri": str(path)}}
    with pytest.raises(InvalidArgument, match="read as src_tgt"):
        prepare(plan_from_spec(spec_from_yaml(dpo)), Path, tokenizer)


def test_datasets_come_from_paths_urls_and_registry_artifacts(tmp_path: Path) -> None:
    import fsspec

    local = _write(tmp_path / "d.jsonl", [{"text": "x"}])
    assert fetch(str(local), tmp_path / "dl", None, None) == local
    assert fetch(f"file://{local}", tmp_path / "dl", None, None) == local
    with fsspec.open("memory://bucket/remote.jsonl", "w") as f:
        f.write('{"text": "y"}\n')
    fetched = fetch("memory://bucket/remote.jsonl", tmp_path / "dl", None, None)
    assert fetched.read_text() == '{"text": "y"}\n' and fetched.parent == tmp_path / "dl"

    class Registry:
        def materialize(self, ref: str, cache_dir: Path | None) -> Path:
            assert ref == "datasets/chat@2"
            return tmp_path

    assert fetch("datasets/chat@2:d.jsonl", tmp_path / "dl", Registry(), None) == tmp_path / "d.jsonl"
    with pytest.raises(InvalidArgument, match="leaves the artifact"):
        fetch("datasets/chat@2:../etc/passwd", tmp_path / "dl", Registry(), None)
    with pytest.raises(NotFound, match="no such file"):
        fetch(str(tmp_path / "missing.jsonl"), tmp_path / "dl", None, None)
    assert torch.equal(torch.tensor([1]), torch.tensor([1]))
