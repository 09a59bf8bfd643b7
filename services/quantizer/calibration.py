"""Calibration and evaluation data: text, JSONL or token-id files -> fixed-length token sequences.

Text sources are tokenized document by document (with the tokenizer's BOS,
and its EOS appended) and concatenated; token-id files (one sequence per
line, a JSON list or whitespace/comma separated ids) are concatenated as
given. The stream is cut into consecutive sequences of `seq_len` tokens, the
way GPTQ/AWQ calibration and perplexity evaluation are usually done; a
caller takes the first n for calibration and the following ones as held-out
evaluation text.

JSONL records may be {"text"} (or "content"), chat {"messages"} /
{"conversations"} (rendered with the tokenizer's chat template when it has
one), {"prompt", "completion"|"response"}, {"instruction", "input", "output"}
or PaddleNLP's {"src", "tgt"}. A .json file may hold a list of such records
or of strings; any other file is one plain-text document.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from cairn.common.errors import InvalidArgument

_ROLE_KEYS = (("role", "content"), ("from", "value"))
_SPEAKERS = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
_TEXT_FIELDS = (
    ("text",),
    ("content",),
    ("prompt", "completion"),
    ("prompt", "response"),
    ("instruction", "input", "output"),
    ("question", "answer"),
    ("src", "tgt"),
)


def read_token_ids(path: Path) -> list[list[int]]:
    """One sequence of ids per non-empty line."""
    sequences = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text:
                continue
            try:
                ids = (
                    json.loads(text)
                    if text.startswith("[")
                    else [int(t) for t in text.replace(",", " ").split()]
                )
            except ValueError as e:
                raise InvalidArgument(
                    f"{path}:{number}: not a JSON list or whitespace-separated ids ({e})"
                ) from None
            if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
                raise InvalidArgument(f"{path}:{number}: token ids must be non-negative integers")
            sequences.append(ids)
    if not sequences:
        raise InvalidArgument(f"{path}: no token ids in it")
    return sequences


def read_documents(path: Path, tokenizer: Any) -> list[str]:
    """The documents of a text, JSON or JSONL dataset, as strings ready to tokenize."""
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"{path}: not UTF-8 text ({e})") from None
    if path.suffix == ".jsonl" or (path.suffix != ".json" and raw.lstrip().startswith("{")):
        documents = []
        for number, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                documents.append(_record_text(_json(line, f"{path}:{number}"), tokenizer, f"{path}:{number}"))
    elif path.suffix == ".json":
        records = _json(raw, str(path))
        if not isinstance(records, list):
            raise InvalidArgument(f"{path}: a .json dataset must hold a list of records or strings")
        documents = [
            r if isinstance(r, str) else _record_text(r, tokenizer, f"{path}[{i}]")
            for i, r in enumerate(records)
        ]
    else:
        documents = [raw]
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise InvalidArgument(f"{path}: no text in it")
    return documents


def tokenize(documents: Iterable[str], tokenizer: Any) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    sequences = []
    for document in documents:
        ids = list(tokenizer(document, add_special_tokens=True)["input_ids"])
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        sequences.append(ids)
    return sequences


def cut(sequences: list[list[int]], seq_len: int, count: int, skip_tokens: int = 0) -> torch.Tensor:
    """Up to `count` consecutive `[seq_len]` windows of the concatenated stream, after `skip_tokens`."""
    stream = torch.tensor([t for sequence in sequences for t in sequence], dtype=torch.long)[skip_tokens:]
    available = min(count, stream.numel() // seq_len)
    return stream[: available * seq_len].view(available, seq_len)


def total_tokens(sequences: list[list[int]]) -> int:
    return sum(len(s) for s in sequences)


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"{where}: not valid JSON ({e.msg})") from None


def _record_text(record: Any, tokenizer: Any, where: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise InvalidArgument(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("messages", "conversations"):
        if key in record:
            return _chat_text(record[key], tokenizer, where)
    for fields in _TEXT_FIELDS:
        if all(f in record for f in fields):
            return "\n".join(_flatten(record[f]) for f in fields if record[f])
    known = ", ".join("+".join(f) for f in (("messages",), ("conversations",), *_TEXT_FIELDS))
    raise InvalidArgument(f"{where}: no text field; records need one of: {known}")


def _flatten(value: Any) -> str:
    return "\n".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _chat_text(turns: Any, tokenizer: Any, where: str) -> str:
    if not isinstance(turns, list) or not turns:
        raise InvalidArgument(f"{where}: a conversation must be a non-empty list of messages")
    messages = []
    for turn in turns:
        role_key, content_key = next(((r, c) for r, c in _ROLE_KEYS if isinstance(turn, dict) and r in turn),
                                     (None, None))  # fmt: skip
        if role_key is None:
            raise InvalidArgument(f"{where}: messages need role/content (or ShareGPT from/value) keys")
        role = _SPEAKERS.get(str(turn[role_key]).lower(), str(turn[role_key]).lower())
        messages.append({"role": role, "content": str(turn.get(content_key) or "")})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(m["content"] for m in messages)
