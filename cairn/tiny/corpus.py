"""Text the tiny model's tokenizer is trained on, generated from a seed.

No dataset can be downloaded here, so the corpus is assembled from the small
hand-written pools in `corpus_pools.json`: English prose, code, numbers and
punctuation, chat turns and tool-call JSON, and sentences in scripts whose
UTF-8 takes two to four bytes per character (accented Latin, Cyrillic, Greek,
Arabic, Hebrew, Devanagari, Thai, CJK, emoji). Those scripts matter: byte-level
BPE only learns to merge a multi-byte character when it sees it often, and
the tokenizer service's incremental detokenizer needs tokens that end in the
middle of a character to be exercised at all.

Everything draws from one `random.Random(seed)`, so the same seed yields the
same text on every machine and Python version.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterator
from importlib import resources


@functools.cache
def _pools() -> dict[str, list[str]]:
    return json.loads(resources.files("cairn.tiny").joinpath("corpus_pools.json").read_text(encoding="utf-8"))


class _Writer:
    """One method per kind of text; each draws only from `self.rng`."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.pools = _pools()
        # Weights: how often each kind appears, roughly the mix a chat and code model meets.
        self.kinds = (
            (self.prose, 20),
            (self.paragraphs, 8),
            (self.code, 14),
            (self.code_block, 4),
            (self.multilingual, 22),
            (self.numbers, 8),
            (self.symbols, 8),
            (self.chat, 12),
        )

    def sample(self) -> str:
        writers = [w for w, _ in self.kinds]
        return self.rng.choices(writers, [weight for _, weight in self.kinds])[0]()

    def pick(self, pool: str) -> str:
        return self.rng.choice(self.pools[pool])

    def identifier(self) -> str:
        parts = self.rng.sample(self.pools["identifier_parts"], self.rng.randint(1, 3))
        if self.rng.random() < 0.75:
            return "_".join(parts)
        return parts[0] + "".join(p.title() for p in parts[1:])

    def number(self) -> str:
        rng = self.rng
        kind = rng.randrange(9)
        if kind == 0:
            return str(rng.randint(0, 100))
        if kind == 1:
            return str(rng.randint(100, 10**9))
        if kind == 2:
            return f"{rng.uniform(-1000, 1000):.{rng.randint(1, 4)}f}"
        if kind == 3:
            return f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        if kind == 4:
            return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        if kind == 5:
            return f"{rng.randint(0, 100)}%"
        if kind == 6:
            return f"0x{rng.getrandbits(32):08x}"
        if kind == 7:
            return f"v{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}"
        return f"{rng.uniform(1e-6, 1e6):.3e}"

    def prose(self) -> str:
        rng = self.rng
        if rng.random() < 0.15:
            return self.pick("prose")
        if rng.random() < 0.12:
            return self.pick("questions")
        sentence = f"{self.pick('subjects')} {self.pick('verbs')} {self.pick('objects')}"
        if rng.random() < 0.5:
            sentence += f" {self.pick('adverbs')}"
        if rng.random() < 0.35:
            sentence += f", {self.pick('clauses')}"
        if rng.random() < 0.2:
            sentence += f" ({self.number()} times)"
        return sentence[0].upper() + sentence[1:] + rng.choice((".", ".", ".", "!", "?", ";", "..."))

    def paragraphs(self) -> str:
        count = self.rng.randint(1, 3)
        return "\n\n".join(
            " ".join(self.prose() for _ in range(self.rng.randint(1, 4))) for _ in range(count)
        )

    def code(self) -> str:
        rng = self.rng
        pool = rng.choice(("python_lines", "python_lines", "c_lines", "shell_lines"))
        a, b, c = self.identifier(), self.identifier(), self.identifier()
        line = self.pick(pool).format(
            a=a,
            b=b,
            c=c,
            A=a.upper(),
            n=rng.randint(0, 4096),
            m=rng.choice((64, 128, 256)),
            t=self.pick("types"),
        )
        return " " * rng.choice((0, 0, 4, 8, 12)) + line

    def code_block(self) -> str:
        return "\n".join(self.code() for _ in range(self.rng.randint(2, 6)))

    def numbers(self) -> str:
        sep = self.rng.choice((", ", " ", "; ", " | ", "\t"))
        return sep.join(self.number() for _ in range(self.rng.randint(2, 8)))

    def multilingual(self) -> str:
        rng = self.rng
        line = self.pick("multilingual")
        if rng.random() < 0.4:
            line += " " + self.pick("multilingual")
        if rng.random() < 0.5:
            line += " " + "".join(self.pick("emoji") for _ in range(rng.randint(1, 3)))
        return line

    def symbols(self) -> str:
        makers = (lambda: self.pick("symbols"), lambda: self.pick("emoji"), self.number, self.identifier)
        return " ".join(self.rng.choice(makers)() for _ in range(self.rng.randint(3, 10)))

    def chat(self) -> str:
        rng = self.rng
        if rng.random() < 0.5:
            return f"{self.pick('roles')}\n\n{rng.choice((self.prose, self.multilingual))()}"
        value = rng.choice((self.number(), self.pick("objects"), rng.random() < 0.5))
        call = {"name": self.pick("tool_names"), "parameters": {self.identifier(): value}}
        return json.dumps(call, ensure_ascii=rng.random() < 0.3)


def corpus_samples(num_samples: int = 4000, seed: int = 0) -> Iterator[str]:
    """Yield `num_samples` texts (a line or a few paragraphs each, about 80 bytes on average)."""
    writer = _Writer(seed)
    for _ in range(num_samples):
        yield writer.sample()
