"""JSONL layouts: detect which one a dataset uses and read each line into an Example.

Every problem raises ValueError with what is wrong; the reader adds the file
and line number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..plan import DatasetFormat
from .examples import Conversation, Document, Example, Message, Preference

ROLES = ("system", "user", "assistant", "tool")
# ShareGPT / Qwen speaker names.
_SPEAKERS = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function_response": "tool",
}


def detect_format(record: dict[str, Any]) -> DatasetFormat:
    keys = set(record)
    if "messages" in keys:
        return DatasetFormat.MESSAGES
    if "conversations" in keys:
        return DatasetFormat.CONVERSATIONS
    if {"chosen", "rejected"} <= keys:
        return DatasetFormat.DPO_PAIRS
    if {"src", "tgt", "response", "sort"} <= keys:
        return DatasetFormat.DPO_SRC_TGT
    if {"src", "tgt"} <= keys:
        return DatasetFormat.SRC_TGT
    if {"instruction", "output"} <= keys:
        return DatasetFormat.ALPACA
    if "text" in keys:
        return DatasetFormat.TEXT
    raise ValueError(
        f"cannot tell the dataset format from the keys {sorted(keys)}; expected one of: messages, "
        "conversations, prompt/chosen/rejected, src/tgt/response/sort, src/tgt, instruction/output, text "
        "(or set dataset.format)"
    )


def parse_record(dataset_format: DatasetFormat, record: Any) -> Example:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return _PARSERS[dataset_format](record)


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    raise ValueError(f"{what} must be a string, got {type(value).__name__}")


def _turns(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{what} must be a string or a list of strings")


def _require(record: dict[str, Any], key: str) -> Any:
    if key not in record:
        raise ValueError(f"missing key {key!r}")
    return record[key]


def _check_conversation(messages: list[Message]) -> Conversation:
    if not any(m.train for m in messages):
        raise ValueError("has no assistant turn to learn from")
    return Conversation(tuple(messages))


def _system(record: dict[str, Any]) -> list[Message]:
    system = record.get("system")
    return [Message("system", _text(system, "system"))] if system else []


def _src_tgt(record: dict[str, Any]) -> Example:
    src = _turns(_require(record, "src"), "src")
    tgt = _turns(_require(record, "tgt"), "tgt")
    if len(src) != len(tgt):
        raise ValueError(f"src has {len(src)} turns but tgt has {len(tgt)}; they pair up one to one")
    messages = _system(record)
    for question, answer in zip(src, tgt, strict=True):
        messages += [Message("user", question), Message("assistant", answer, train=True)]
    return _check_conversation(messages)


def _conversations(record: dict[str, Any]) -> Example:
    turns = _require(record, "conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("conversations must be a non-empty list of {from, value} objects")
    messages = _system(record)
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"conversations[{i}] must be an object with 'from' and 'value'")
        role = _SPEAKERS.get(str(turn["from"]).lower())
        if role is None:
            raise ValueError(f"conversations[{i}].from {turn['from']!r} is not one of {sorted(_SPEAKERS)}")
        messages.append(
            Message(role, _text(turn["value"], f"conversations[{i}].value"), train=role == "assistant")
        )
    return _check_conversation(messages)


def _alpaca(record: dict[str, Any]) -> Example:
    instruction = _text(_require(record, "instruction"), "instruction")
    extra_input = _text(record.get("input") or "", "input")
    output = _text(_require(record, "output"), "output")
    messages = _system(record)
    for i, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"history[{i}] must be a [question, answer] pair of strings")
        messages += [Message("user", pair[0]), Message("assistant", pair[1], train=True)]
    prompt = f"{instruction}\n\n{extra_input}" if extra_input else instruction
    messages += [Message("user", prompt), Message("assistant", output, train=True)]
    return _check_conversation(messages)


def _messages(record: dict[str, Any]) -> Example:
    raw = _require(record, "messages")
    if not isinstance(raw, list) or not raw:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    messages = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "role" not in item:
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = item["role"]
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        content = item.get("content")
        text = "" if content is None and item.get("tool_calls") else _text(content, f"messages[{i}].content")
        # OpenAI's fine-tuning format: "weight": 0 keeps an assistant message out of the loss.
        weight = item.get("weight", 1)
        if weight not in (0, 1):
            raise ValueError(f"messages[{i}].weight must be 0 or 1, got {weight!r}")
        extra = {k: v for k, v in item.items() if k not in ("role", "content", "weight")}
        messages.append(Message(role, text, train=role == "assistant" and weight == 1, extra=extra))
    return _check_conversation(messages)


def _dpo_src_tgt(record: dict[str, Any]) -> Example:
    src = _turns(_require(record, "src"), "src")
    tgt = _turns(_require(record, "tgt"), "tgt")
    if len(tgt) != len(src) - 1:
        raise ValueError(
            f"src has {len(src)} turns, so tgt needs {len(src) - 1} (the answers before the last)"
        )
    responses = _turns(_require(record, "response"), "response")
    sort = _require(record, "sort")
    if len(responses) != 2 or not isinstance(sort, list) or len(sort) != 2:
        raise ValueError("response and sort must each hold exactly two entries")
    if not all(isinstance(s, int | float) and not isinstance(s, bool) for s in sort) or sort[0] == sort[1]:
        raise ValueError(f"sort must be two different numbers (higher is preferred), got {sort!r}")
    prompt = _system(record)
    for question, answer in zip(src[:-1], tgt, strict=True):
        prompt += [Message("user", question), Message("assistant", answer)]
    prompt.append(Message("user", src[-1]))
    chosen, rejected = (responses[0], responses[1]) if sort[0] > sort[1] else (responses[1], responses[0])
    return Preference(tuple(prompt), chosen, rejected)


def _answer(value: Any, what: str) -> str:
    """A response as a string, or as TRL's list holding one assistant message."""
    if isinstance(value, list):
        answers = [m for m in value if isinstance(m, dict) and m.get("role") == "assistant"]
        if len(answers) != 1:
            raise ValueError(f"{what} as a message list must hold exactly one assistant message")
        return _text(answers[0].get("content"), f"{what} content")
    return _text(value, what)


def _dpo_pairs(record: dict[str, Any]) -> Example:
    prompt_value = _require(record, "prompt")
    if isinstance(prompt_value, list):
        prompt = _messages({"messages": [*prompt_value, {"role": "assistant", "content": ""}]}).messages[:-1]
    else:
        prompt = (*_system(record), Message("user", _text(prompt_value, "prompt")))
    return Preference(
        tuple(prompt),
        _answer(_require(record, "chosen"), "chosen"),
        _answer(_require(record, "rejected"), "rejected"),
    )


def _document(record: dict[str, Any]) -> Example:
    return Document(_text(_require(record, "text"), "text"))


_PARSERS: dict[DatasetFormat, Callable[[dict[str, Any]], Example]] = {
    DatasetFormat.SRC_TGT: _src_tgt,
    DatasetFormat.CONVERSATIONS: _conversations,
    DatasetFormat.ALPACA: _alpaca,
    DatasetFormat.MESSAGES: _messages,
    DatasetFormat.DPO_SRC_TGT: _dpo_src_tgt,
    DatasetFormat.DPO_PAIRS: _dpo_pairs,
    DatasetFormat.TEXT: _document,
}
