"""Chained hashes of full KV blocks: the keys of the prefix cache.

A block's hash covers its parent's hash and its own token ids, so equal hashes
mean equal whole prefixes, not just equal blocks. The chain starts from a root
derived from an optional cache key (a LoRA adapter name, a tenant salt): the
same tokens under different keys never share KV. BLAKE2b keeps collisions out
of reach even for crafted prompts, which matters because a collision would
silently serve one tenant's KV to another.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator, Sequence

HASH_BYTES = 16

_NO_KEY_ROOT = hashlib.blake2b(b"", digest_size=HASH_BYTES, person=b"cairn.root.none").digest()


def root_hash(cache_key: str | None) -> bytes:
    if cache_key is None:
        return _NO_KEY_ROOT
    return hashlib.blake2b(cache_key.encode(), digest_size=HASH_BYTES, person=b"cairn.root.key").digest()


def block_hash(parent: bytes, token_ids: Sequence[int]) -> bytes:
    # The parent is a fixed-width prefix, so parent + tokens is unambiguous.
    return hashlib.blake2b(parent + array("i", token_ids).tobytes(), digest_size=HASH_BYTES).digest()


def iter_block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    parent: bytes,
    start_block: int = 0,
    end_block: int | None = None,
) -> Iterator[bytes]:
    """Hashes of the full blocks start_block .. end_block-1 of token_ids; `parent`
    is the hash of block start_block-1 (or the root when starting at 0)."""
    stop = len(token_ids) // block_size if end_block is None else end_block
    for i in range(start_block, stop):
        parent = block_hash(parent, token_ids[i * block_size : (i + 1) * block_size])
        yield parent
