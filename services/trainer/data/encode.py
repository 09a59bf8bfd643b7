"""Examples to token ids and labels, through the model's own chat template.

Only assistant turns carry labels (-100 elsewhere). Their character spans are
found by rendering the conversation up to each turn (the generation prompt
before it, the turn itself after), then every token of the full rendering
whose first character falls in a span is labelled, so subword merges at turn
boundaries can never shift a label. The first token of every sample is
unlabelled: nothing before it predicts it, packed or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .examples import Conversation, Document, Message, Preference

IGNORE = -100

# For base models that ship no chat template. Turns start after a newline, where byte-level BPE
# never merges across, so the prompt's tokens are the same with or without the answer.
FALLBACK_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for m in messages %}"
    "{{ '### ' ~ (m.role | capitalize) ~ ':\\n' ~ m.content }}"
    "{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Sample:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_labels(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass(frozen=True)
class PairSample:
    chosen: Sample
    rejected: Sample


class TemplateError(ValueError):
    """The chat template does not render conversations turn by turn."""


class Encoder:
    def __init__(self, tokenizer: Any, max_length: int) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("the trainer needs a fast tokenizer (a tokenizer.json next to the model)")
        if tokenizer.chat_template is None:
            tokenizer.chat_template = FALLBACK_TEMPLATE
        self.tokenizer = tokenizer
        self.max_length = max_length

    def _render(self, messages: Sequence[Message], *, generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            [m.for_template() for m in messages], tokenize=False, add_generation_prompt=generation_prompt
        )

    def _tokens(self, text: str, spans: Sequence[tuple[int, int]]) -> Sample:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        labels = [
            token if any(begin < end and stop > start for start, end in spans) else IGNORE
            for token, (begin, stop) in zip(ids, encoded["offset_mapping"], strict=True)
        ]
        if labels:
            labels[0] = IGNORE
        return Sample(ids[: self.max_length], labels[: self.max_length])

    def assistant_spans(self, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
        """The full rendering and the character span of each trained turn in it."""
        full = self._render(messages)
        spans = []
        for i, message in enumerate(messages):
            if not message.train:
                continue
            before = self._render(messages[:i], generation_prompt=True)
            upto = self._render(messages[: i + 1])
            if not (full.startswith(upto) and upto.startswith(before)):
                if i == len(messages) - 1 and full.startswith(before):
                    # Templates that rewrite earlier turns still render the last one in place.
                    spans.append((len(before), len(full)))
                    continue
                raise TemplateError(
                    f"the chat template renders turn {i + 1} differently once later turns follow, so its "
                    "tokens cannot be located; keep one trained assistant turn per example (the last)"
                )
            spans.append((len(before), len(upto)))
        return full, spans

    def conversation(self, conversation: Conversation) -> Sample:
        full, spans = self.assistant_spans(conversation.messages)
        return self._tokens(full, spans)

    def preference(self, preference: Preference) -> PairSample:
        return PairSample(self._answer(preference.prompt, preference.chosen),
                          self._answer(preference.prompt, preference.rejected))  # fmt: skip

    def _answer(self, prompt: Sequence[Message], answer: str) -> Sample:
        full, spans = self.assistant_spans((*prompt, Message("assistant", answer, train=True)))
        return self._tokens(full, spans)

    def document(self, document: Document) -> list[Sample]:
        """The text with BOS/EOS as the tokenizer defines them, cut into max_length pieces."""
        ids = list(self.tokenizer(document.text, add_special_tokens=False)["input_ids"])
        if self.tokenizer.bos_token_id is not None:
            ids.insert(0, self.tokenizer.bos_token_id)
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        pieces = []
        for start in range(0, len(ids), self.max_length):
            piece = ids[start : start + self.max_length]
            if len(piece) > 1:
                pieces.append(Sample(piece, [IGNORE, *piece[1:]]))
        return pieces
