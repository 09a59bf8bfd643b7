"""The tokenizer service's operations on plain Python values: what the gRPC shell and tests call.

Every method is blocking and thread-safe; the server runs them on a thread
pool. Models are named by reference (see `loader`) and resolved per call, so
an alias moved in the registry takes effect without a restart.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Encoding as HFEncoding

from cairn.common.errors import InvalidArgument

from .chat import render_chat
from .detokenize import detokenize_batch
from .loader import TokenizerLoader
from .model_tokenizer import ModelTokenizer
from .records import ChatInput, Encoding, StreamResult, StreamStep, TokenizerInfo, TruncationSide


class TokenizerCore:
    def __init__(self, loader: TokenizerLoader, *, allow_request_chat_template: bool = True) -> None:
        self.loader = loader
        self._allow_request_chat_template = allow_request_chat_template

    def encode(
        self,
        model: str,
        inputs: Sequence[str | ChatInput],
        *,
        add_special_tokens: bool = True,
        max_length: int = 0,
        truncation_side: TruncationSide = "right",
    ) -> list[Encoding]:
        """Token ids of each input, in order; chat inputs are rendered with the chat template first.

        `add_special_tokens` applies to plain text only (a rendered chat holds
        its own special tokens). `max_length` > 0 cuts each result to that many
        tokens, special tokens included, from the `truncation_side` end.
        """
        if not inputs:
            raise InvalidArgument("inputs is empty; give at least one text or chat")
        if max_length < 0:
            raise InvalidArgument(f"max_length must be >= 0 (0: no truncation), got {max_length}")
        if truncation_side not in ("right", "left"):
            raise InvalidArgument(f"truncation_side must be 'right' or 'left', got {truncation_side!r}")
        tokenizer = self.loader.get(model)
        texts: list[str] = []
        for i, item in enumerate(inputs):
            if isinstance(item, ChatInput):
                try:
                    texts.append(
                        render_chat(tokenizer, item, allow_request_template=self._allow_request_chat_template)
                    )
                except InvalidArgument as e:
                    raise InvalidArgument(f"inputs[{i}]: {e.message}") from None
            else:
                texts.append(item)
        # Specials are added after truncation, so a cut never removes BOS.
        raw = tokenizer.backend.encode_batch(texts, add_special_tokens=False)
        results = []
        for item, text, encoding in zip(inputs, texts, raw, strict=True):
            is_chat = isinstance(item, ChatInput)
            specials = add_special_tokens and not is_chat
            truncated = _truncate(tokenizer, encoding, specials, max_length, truncation_side)
            if specials:
                encoding = tokenizer.backend.post_process(encoding, None, True)
            results.append(Encoding(list(encoding.ids), truncated, text if is_chat else ""))
        return results

    def decode(self, model: str, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        if not token_ids:
            raise InvalidArgument("token_ids is empty; give the ids to decode")
        tokenizer = self.loader.get(model)
        tokenizer.check_token_ids(token_ids, "token_ids")
        # The HF wrapper, not the backend: it applies the model's
        # clean_up_tokenization_spaces, so the text matches transformers'.
        return tokenizer.hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def detokenize_batch(self, streams: Sequence[StreamStep]) -> list[StreamResult]:
        """Advance every stream by its new tokens (see `detokenize`); streams may use different models."""
        tokenizers = {model: self.loader.get(model) for model in dict.fromkeys(s.model for s in streams)}
        return detokenize_batch(streams, tokenizers)

    def info(self, model: str) -> TokenizerInfo:
        return self.loader.get(model).info()


def _truncate(
    tokenizer: ModelTokenizer, encoding: HFEncoding, specials: bool, max_length: int, side: TruncationSide
) -> bool:
    """Cut `encoding` in place so that, with its special tokens, it fits `max_length`; whether it cut."""
    if not max_length:
        return False
    reserved = tokenizer.backend.num_special_tokens_to_add(False) if specials else 0
    if max_length <= reserved:
        raise InvalidArgument(
            f"max_length {max_length} leaves no room for text after the {reserved} special tokens "
            f"{tokenizer.name} adds; use at least {reserved + 1} or add_special_tokens=false"
        )
    if len(encoding.ids) <= max_length - reserved:
        return False
    encoding.truncate(max_length - reserved, direction=side)
    return True
