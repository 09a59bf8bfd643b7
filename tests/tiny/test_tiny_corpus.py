"""The tokenizer corpus: deterministic, small, and covering the scripts BPE must learn."""

from __future__ import annotations

import re

from cairn.tiny.corpus import corpus_samples


def test_same_seed_same_text_other_seed_other_text() -> None:
    assert list(corpus_samples(300)) == list(corpus_samples(300))
    assert list(corpus_samples(300, seed=1)) != list(corpus_samples(300))


def test_size_is_a_few_hundred_kilobytes() -> None:
    size = sum(len(s.encode()) for s in corpus_samples())
    assert 150_000 < size < 500_000


def test_covers_the_scripts_the_tokenizer_must_handle() -> None:
    text = "\n".join(corpus_samples())
    patterns = {
        "accented latin": r"[éèàçüößñłż]",
        "cyrillic": r"[\u0400-\u04ff]",
        "greek": r"[\u0370-\u03ff]",
        "arabic": r"[\u0600-\u06ff]",
        "cjk": r"[\u4e00-\u9fff]",
        "kana": r"[\u3040-\u30ff]",
        "hangul": r"[\uac00-\ud7af]",
        "emoji": r"[\U0001f300-\U0001faff]",
        "code": r"def \w+\(self",
        "numbers": r"\d+\.\d+",
        "paragraph breaks": r"\n\n",
        "tool calls": r'\{"name": "\w+", "parameters": \{',
    }
    missing = [name for name, pattern in patterns.items() if not re.search(pattern, text)]
    assert missing == []
