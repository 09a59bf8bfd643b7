"""Test plumbing for the tokenizer suite: a background event loop, services served on it, a sync
client, and a SentencePiece-style tokenizer to test against."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from loopback import LoopThread

from cairn.services.tokenizer.client import TokenizerClient

R = TypeVar("R")


class SyncClient:
    """The async TokenizerClient, driven from synchronous tests through the loop thread."""

    def __init__(self, loop: LoopThread, client: TokenizerClient) -> None:
        self._loop = loop
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._loop.run(method(*args, **kwargs))


def build_byte_fallback_tokenizer(out: Path) -> Path:
    """A Llama 2 style tokenizer in `out`: SentencePiece-like BPE over "▁" pieces with byte fallback.

    Its decoder drops the leading space of a sequence's first token and spells
    characters outside its small alphabet as <0xNN> byte tokens, one U+FFFD per
    byte until complete: the two cases byte-level BPE does not exercise.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    from cairn.tiny.corpus import corpus_samples

    trainer = Tokenizer(models.BPE())
    trainer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer.train_from_iterator(
        corpus_samples(), BpeTrainer(vocab_size=400, limit_alphabet=100, show_progress=False)
    )
    learned = json.loads(trainer.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    out.mkdir(parents=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out
