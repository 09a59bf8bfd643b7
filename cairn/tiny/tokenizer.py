"""The tiny model's tokenizer: byte-level BPE trained here, saved in HF layout.

The special tokens and the chat template follow Llama 3, the layout most
serving stacks already handle. Specials come first (ids 0-5) and are followed
by the 256 byte symbols, so any byte string encodes without an unknown token.

The files are written by hand rather than through `save_pretrained`: recent
transformers releases move the chat template to `chat_template.jinja` and drop
`special_tokens_map.json`, while the layout published checkpoints use (and
older readers expect) keeps both in the JSON files written here.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from cairn.common.errors import InvalidArgument
from cairn.tiny.corpus import corpus_samples

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
END_OF_TURN = "<|eot_id|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (BEGIN_OF_TEXT, END_OF_TEXT, START_HEADER, END_HEADER, END_OF_TURN, PAD)

# A chat model's answer ends with <|eot_id|>, so that is the tokenizer's eos
# (as in Llama 3.x Instruct); generation stops on <|end_of_text|> as well.
BOS_TOKEN = BEGIN_OF_TEXT
EOS_TOKEN = END_OF_TURN
PAD_TOKEN = PAD

MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256

# Llama 3's pre-tokenizer split: runs of newlines stay together (so "\n\n"
# after a chat header can become one token) and numbers split into groups of
# at most three digits.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def chat_template() -> str:
    return resources.files("cairn.tiny").joinpath("chat_template.jinja").read_text(encoding="utf-8").strip()


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """A fresh tokenizer with at most `vocab_size` entries (fewer if the corpus runs out of merges)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise InvalidArgument(
            f"vocab_size {vocab_size} is too small: byte-level BPE needs {MIN_VOCAB_SIZE} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    return Tokenizer.from_str(_trained_json(vocab_size))


@functools.lru_cache(maxsize=4)
def _trained_json(vocab_size: int) -> str:
    # Cached because test suites build several architectures with one tokenizer.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_samples(), trainer)
    # Like Llama 3, plain encoding starts with <|begin_of_text|>; a rendered
    # chat template already holds it and must be encoded without specials.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A",
                pair=f"{BOS_TOKEN} $A {BOS_TOKEN}:1 $B:1",
                special_tokens=[(BOS_TOKEN, tokenizer.token_to_id(BOS_TOKEN))],
            ),
        ]
    )
    return tokenizer.to_str(pretty=True)


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, *, model_max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`."""
    (out_dir / "tokenizer.json").write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
    added = {
        str(tokenizer.token_to_id(token)): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in SPECIAL_TOKENS
    }
    config = {
        "added_tokens_decoder": added,
        "bos_token": BOS_TOKEN,
        "chat_template": chat_template(),
        # Decoding must give back the exact text; the default clean-up would
        # rewrite " ." as "." and similar.
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "pad_token": PAD_TOKEN,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    special_map = {
        name: {"content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
        for name, token in (("bos_token", BOS_TOKEN), ("eos_token", EOS_TOKEN), ("pad_token", PAD_TOKEN))
    }
    _write_json(out_dir / "special_tokens_map.json", special_map)


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
