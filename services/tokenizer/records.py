"""Plain data the tokenizer core takes and returns; `convert` maps them to and from cairn.v1 messages.

Chat messages and tools are OpenAI-shaped dicts (what `apply_chat_template`
and the HTTP API use): `{"role", "content", "name", "tool_calls", "tool_call_id"}`
and `{"type": "function", "function": {"name", "description", "parameters"}}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

TruncationSide = Literal["right", "left"]

# Tokens of context an incremental decode keeps before the text it has not
# emitted yet: enough for decoders that drop a leading space on the first
# token (SentencePiece) to render the next token's space; vLLM uses 5 too.
CONTEXT_TOKENS = 5


@dataclass(frozen=True)
class ChatInput:
    """A conversation to render with the model's chat template (or `chat_template`)."""

    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]] = ()
    # None: true, unless continue_final_message is set.
    add_generation_prompt: bool | None = None
    continue_final_message: bool = False
    chat_template: str = ""


@dataclass(frozen=True)
class Encoding:
    token_ids: list[int]
    truncated: bool = False
    # For chat inputs: the prompt text the template rendered.
    rendered: str = ""


@dataclass(frozen=True)
class DetokenizeState:
    """What a stream carries between DetokenizeBatch calls (see `detokenize`)."""

    context_token_ids: tuple[int, ...] = ()
    prefix_offset: int = 0
    read_offset: int = 0

    @classmethod
    def seeded(cls, prompt_token_ids: Sequence[int]) -> DetokenizeState:
        """The state of a new stream after `prompt_token_ids`: its first tokens decode in their context."""
        tail = tuple(prompt_token_ids[-CONTEXT_TOKENS:])
        return cls(tail, len(tail), len(tail))


@dataclass(frozen=True)
class StreamStep:
    """One stream's new tokens for a DetokenizeBatch call."""

    model: str
    new_token_ids: Sequence[int]
    state: DetokenizeState = field(default_factory=DetokenizeState)
    skip_special_tokens: bool = False
    # The stream ended: emit whatever is held back, complete or not.
    final: bool = False
    stream_id: str = ""


@dataclass(frozen=True)
class StreamResult:
    stream_id: str
    # Text to append; empty while a character is still incomplete.
    text: str
    state: DetokenizeState
    # Each new token decoded alone (specials included), for logprobs display.
    token_texts: list[str]


@dataclass(frozen=True)
class TokenizerInfo:
    # The resolved version ("name@3") or the model directory.
    model: str
    vocab_size: int
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    has_chat_template: bool
    supports_tools: bool
    # 0 when neither the tokenizer nor the model config says.
    model_max_length: int
    special_token_ids: tuple[int, ...]
