"""The layouts every dataset format is read into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    # Whether the loss covers this message (assistant turns, unless the data says otherwise).
    train: bool = False
    # Other keys the chat template may use (tool_calls, name, tool_call_id).
    extra: dict[str, Any] = field(default_factory=dict)

    def for_template(self) -> dict[str, Any]:
        return {**self.extra, "role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class Preference:
    """A prompt (all turns before the answer) and two answers, `chosen` preferred over `rejected`."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Document:
    text: str


Example = Conversation | Preference | Document
