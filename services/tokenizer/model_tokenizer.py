"""One model's tokenizer as loaded from an HF directory, with the facts the service reports.

Loading goes through `transformers.AutoTokenizer` (so every tokenizer class and
chat-template layout HF reads works), but the hot paths use its `tokenizers`
backend directly: batch encode and decode in Rust, without the Python wrapper
or its per-call truncation state, which is not safe to share between threads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from cairn.common.errors import FailedPrecondition, InvalidArgument, NotFound

from .records import TokenizerInfo

# Files a tokenizer may need, at the top of a model directory; everything else
# (weights above all) is left in the registry.
_TOKENIZER_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
    }
)
# One of these must be present for a directory to hold a tokenizer at all.
_TOKENIZER_CORE_FILES = frozenset(
    {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"}
)
_CHAT_TEMPLATE_DIR = "additional_chat_templates/"
_COMMENT = re.compile(r"{#.*?#}", re.DOTALL)
_TOOLS_VARIABLE = re.compile(r"\btools\b")
# transformers reports "no limit" as a huge sentinel (int(1e30)).
_NO_LIMIT = 1 << 32


def is_tokenizer_file(path: str) -> bool:
    """Whether a model artifact at `path` (relative, "/"-separated) is needed to load the tokenizer."""
    if path.startswith(_CHAT_TEMPLATE_DIR):
        name = path[len(_CHAT_TEMPLATE_DIR) :]
        return "/" not in name and name.endswith(".jinja")
    return "/" not in path and (
        path in _TOKENIZER_FILES or path.startswith("tokenizer") or path.endswith(".jinja")
    )


@dataclass(frozen=True, eq=False)
class ModelTokenizer:
    """A loaded tokenizer; immutable and shared by every thread serving the model."""

    name: str
    hf: Any
    backend: Tokenizer
    vocab_size: int
    # Ids at or above this are not tokens of the model. Above vocab_size when
    # the embedding is padded (as many checkpoints pad it); those ids decode to "".
    id_limit: int
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    special_token_ids: tuple[int, ...]
    has_chat_template: bool
    supports_tools: bool
    model_max_length: int

    def check_token_ids(self, token_ids: Sequence[int], what: str) -> None:
        if token_ids and (min(token_ids) < 0 or max(token_ids) >= self.id_limit):
            bad = next(t for t in token_ids if not 0 <= t < self.id_limit)
            raise InvalidArgument(
                f"{what}: token id {bad} is outside the vocabulary of {self.name} "
                f"(ids 0..{self.id_limit - 1})"
            )

    def info(self) -> TokenizerInfo:
        return TokenizerInfo(
            model=self.name,
            vocab_size=self.vocab_size,
            bos_token_id=self.bos_token_id,
            eos_token_ids=self.eos_token_ids,
            has_chat_template=self.has_chat_template,
            supports_tools=self.supports_tools,
            model_max_length=self.model_max_length,
            special_token_ids=self.special_token_ids,
        )


def load_model_tokenizer(directory: Path, name: str) -> ModelTokenizer:
    """Load the tokenizer in `directory`; `name` is what errors and TokenizerInfo call it.

    NotFound when the directory is missing; FailedPrecondition, with the reason,
    when its tokenizer files are missing or broken.
    """
    if not directory.is_dir():
        raise NotFound(f"model directory {directory} does not exist")
    if not any((directory / f).is_file() for f in _TOKENIZER_CORE_FILES):
        raise FailedPrecondition(
            f"{name} has no tokenizer files (tokenizer.json or tokenizer_config.json); "
            "is it a full model directory?"
        )
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise FailedPrecondition(f"cannot load the tokenizer of {name}: {type(e).__name__}: {e}") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise FailedPrecondition(
            f"{name} has no fast tokenizer ({type(hf).__name__}); save it with tokenizer.json"
        )
    # A tokenizer.json may carry truncation or padding settings; the service
    # applies its own per request, and shared backends must not hold any.
    backend.no_truncation()
    backend.no_padding()
    generation = _read_json(directory / "generation_config.json", name)
    model_config = _read_json(directory / "config.json", name)
    vocab_size = len(hf)
    specials = set(hf.all_special_ids)
    specials.update(i for i, token in backend.get_added_tokens_decoder().items() if token.special)
    template = hf.chat_template
    return ModelTokenizer(
        name=name,
        hf=hf,
        backend=backend,
        vocab_size=vocab_size,
        id_limit=max(vocab_size, _int_field(model_config, "vocab_size") or 0),
        bos_token_id=hf.bos_token_id,
        eos_token_ids=_eos_ids(hf.eos_token_id, generation.get("eos_token_id")),
        special_token_ids=tuple(sorted(i for i in specials if isinstance(i, int))),
        has_chat_template=bool(template),
        supports_tools=_template_uses_tools(template),
        model_max_length=_max_length(hf.model_max_length, model_config),
    )


def _read_json(path: Path, name: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FailedPrecondition(f"{name}: cannot read {path.name}: {e}") from None
    if not isinstance(data, dict):
        raise FailedPrecondition(f"{name}: {path.name} is not a JSON object")
    return data


def _int_field(config: dict[str, Any], key: str) -> int | None:
    """`config[key]`, or the same key of a multimodal model's text_config."""
    value = config.get(key)
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get(key)
    return value if isinstance(value, int) else None


def _eos_ids(tokenizer_eos: int | None, generation_eos: int | list[int] | None) -> tuple[int, ...]:
    """The tokenizer's eos, then generation_config's (one id or a list), without repeats."""
    ids = [tokenizer_eos] if tokenizer_eos is not None else []
    ids += generation_eos if isinstance(generation_eos, list) else [generation_eos]
    return tuple(dict.fromkeys(i for i in ids if isinstance(i, int)))


def _template_uses_tools(template: str | dict[str, str] | None) -> bool:
    """Whether a chat template reads the `tools` variable (comments aside), or has a tool_use variant."""
    if isinstance(template, dict):
        return "tool_use" in template or any(_template_uses_tools(t) for t in template.values())
    return bool(template) and _TOOLS_VARIABLE.search(_COMMENT.sub("", template)) is not None


def _max_length(tokenizer_max: int | None, model_config: dict[str, Any]) -> int:
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < _NO_LIMIT:
        return tokenizer_max
    configured = _int_field(model_config, "max_position_embeddings")
    return configured if configured is not None and 0 < configured < _NO_LIMIT else 0
