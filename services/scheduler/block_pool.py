"""The physical KV blocks of one worker replica: reference counts, free blocks
and the prefix cache's hash map.

Every block is in exactly one of three states:
  - free: ref count 0, no hash; handed out first;
  - cached-free: ref count 0 but holding a full block of some prefix that a
    later request may hit; reusable, evicted least recently released first;
  - in use: ref count > 0 (it may also be cached, then a hit just adds a ref).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[bytes | None] = [None] * num_blocks
        # Popped from the end, so block 0 is handed out first.
        self._free = list(range(num_blocks - 1, -1, -1))
        # Insertion order is eviction order; OrderedDict gives O(1) removal
        # from the middle when a prefix hit revives a block.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        # Hash -> every block holding that prefix. Two sequences that computed
        # the same block at once both register it: if only one did and its
        # copy were evicted, the other's live copy could no longer be found,
        # and every block chained after it would be unreachable too.
        self._cached: dict[bytes, list[int]] = {}

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take: free plus cached-free."""
        return len(self._free) + len(self._evictable)

    @property
    def num_evictable(self) -> int:
        return len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        """Blocks registered under a prefix hash (in use or cached-free)."""
        return sum(len(blocks) for blocks in self._cached.values())

    def allocate(self, count: int) -> list[int]:
        """`count` blocks with ref count 1; the caller checked num_free."""
        if count > self.num_free:
            raise RuntimeError(f"asked for {count} blocks with {self.num_free} free")
        blocks = []
        for _ in range(count):
            if self._free:
                block = self._free.pop()
            else:
                block, _ = self._evictable.popitem(last=False)
                self.uncache(block)
            self.ref_counts[block] = 1
            blocks.append(block)
        return blocks

    def lookup(self, block_hash: bytes) -> int | None:
        blocks = self._cached.get(block_hash)
        return blocks[0] if blocks else None

    def touch(self, block: int) -> None:
        """Adds a holder; a cached-free block comes back into use."""
        if self.ref_counts[block] == 0:
            del self._evictable[block]
        self.ref_counts[block] += 1

    def release(self, blocks: Iterable[int]) -> None:
        """Drops one holder of each block. Blocks that become unheld in this call
        are evicted in the order given: pass a table tail first, so a prefix's
        later blocks go before the earlier ones that other prompts share."""
        for block in blocks:
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self.block_hashes[block] is None:
                    self._free.append(block)
                else:
                    self._evictable[block] = None

    def register(self, block: int, block_hash: bytes) -> None:
        """Makes a full, computed block findable by its prefix hash."""
        if self.block_hashes[block] is None:
            self._cached.setdefault(block_hash, []).append(block)
            self.block_hashes[block] = block_hash

    def uncache(self, block: int) -> None:
        """Takes a registered block out of the prefix cache (its KV is about to change)."""
        block_hash = self.block_hashes[block]
        blocks = self._cached[block_hash]
        blocks.remove(block)
        if not blocks:
            del self._cached[block_hash]
        self.block_hashes[block] = None

    def reset_cache(self) -> None:
        """Forgets every cached prefix (the KV behind them is gone, e.g. a worker was replaced)."""
        for block in (b for blocks in self._cached.values() for b in blocks):
            self.block_hashes[block] = None
            if block in self._evictable:
                self._free.append(block)
        self._cached.clear()
        self._evictable.clear()

    def check(self, holders: dict[int, int]) -> None:
        """Raises AssertionError unless the pool agrees with `holders` (block ->
        number of block tables holding it) and its own bookkeeping."""
        free, evictable = set(self._free), set(self._evictable)
        _require(len(free) == len(self._free), "a block is on the free list twice")
        _require(not free & evictable, "a block is both free and cached-free")
        used = {b for b in range(self.num_blocks) if self.ref_counts[b] > 0}
        _require(
            len(free) + len(evictable) + len(used) == self.num_blocks,
            f"free {len(free)} + cached-free {len(evictable)} + used {len(used)} != {self.num_blocks}",
        )
        _require(not used & (free | evictable), "a held block is also free")
        for block in range(self.num_blocks):
            _require(
                self.ref_counts[block] == holders.get(block, 0),
                f"block {block}: ref count {self.ref_counts[block]}, held by {holders.get(block, 0)} tables",
            )
        for block in free:
            _require(self.block_hashes[block] is None, f"free block {block} still has a hash")
        for block in evictable:
            _require(self.block_hashes[block] is not None, f"cached-free block {block} has no hash")
        for block_hash, blocks in self._cached.items():
            _require(bool(blocks), "an empty entry in the hash map")
            for block in blocks:
                _require(
                    self.block_hashes[block] == block_hash, f"the map holds block {block} under another hash"
                )
        hashed = sum(h is not None for h in self.block_hashes)
        _require(hashed == self.num_cached, f"{hashed} blocks have a hash, the map holds {self.num_cached}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)
