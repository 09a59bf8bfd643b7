"""Which scheduler replica last took each prompt prefix, so prompts sharing one meet its KV cache.

Prompts are cut into the scheduler's KV blocks and each full block is named
by the scheduler's own chained hash (`prefix_hash`), so equal hashes mean
equal prefixes up to that block. A prompt goes to the replica that took the
deepest of its blocks, unless that replica is too busy. The table is an LRU
of block hashes: bounded memory, and old prefixes fall out as caches would.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from cairn.services.scheduler.prefix_hash import iter_block_hashes, root_hash


def prompt_block_hashes(token_ids: Sequence[int], block_size: int, cache_key: str | None) -> list[bytes]:
    if block_size <= 0:
        return []
    return list(iter_block_hashes(token_ids, block_size, root_hash(cache_key)))


class PrefixAffinity:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._owners: OrderedDict[bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def lookup(self, hashes: Sequence[bytes]) -> tuple[str | None, int]:
        """The replica that took the deepest block of this prompt's known prefix, and how many blocks."""
        owner, depth = None, 0
        for i, h in enumerate(hashes):
            found = self._owners.get(h)
            if found is None:
                break
            owner, depth = found, i + 1
        return owner, depth

    def record(self, hashes: Sequence[bytes], replica: str) -> None:
        for h in hashes:
            self._owners[h] = replica
            self._owners.move_to_end(h)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)
