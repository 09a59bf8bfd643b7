"""Block tables of one worker replica's sequences over its own BlockPool.

The block manager knows tokens and blocks, not requests: the scheduler tells it
which sequence needs how many slots, and it answers with the blocks to append
(and copies to make), or None when the pool cannot hold them, changing nothing.

Prefix caching: a block is registered under its chained hash only once all of
its tokens have been computed (`cache_blocks`, after the step ran), so a
prefix hit never points at KV that a step in flight is still writing.

Forks: `fork` shares a parent's blocks with a child; whoever then writes into
a block that is still shared gets a private copy first (copy-on-write), and
the (src, dst) pair goes into the step's block_copies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cairn.services.scheduler.block_pool import BlockPool
from cairn.services.scheduler.prefix_hash import iter_block_hashes, root_hash


@dataclass(frozen=True)
class ComputedBlocks:
    """The longest cached prefix of a token list: full blocks whose KV is reusable."""

    block_ids: tuple[int, ...]
    block_hashes: tuple[bytes, ...]
    root: bytes
    num_queried_tokens: int
    block_size: int

    @property
    def num_tokens(self) -> int:
        return len(self.block_ids) * self.block_size


# What growing a table changed: (blocks appended, (src, dst) copies for shared
# blocks replaced by private ones). A plain tuple: this is built once per
# sequence per step, and a NamedTuple costs several times more to create.
SlotUpdate = tuple[list[int], list[tuple[int, int]]]


@dataclass(eq=False)
class _Table:
    blocks: list[int]
    # Chained hashes of the sequence's leading full, computed blocks.
    hashes: list[bytes]
    root: bytes


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self._tables: dict[int, _Table] = {}
        self._queried_tokens = 0
        self._hit_tokens = 0

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks not held by any sequence (free and cached-free)."""
        return self.pool.num_free

    @property
    def num_cached_free_blocks(self) -> int:
        return self.pool.num_evictable

    @property
    def usage(self) -> float:
        """Fraction of the pool held by sequences."""
        return self.pool.num_used / self.pool.num_blocks

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Prompt tokens served from the cache / prompt tokens looked up, since start."""
        return self._hit_tokens / self._queried_tokens if self._queried_tokens else 0.0

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def has_table(self, seq_id: int) -> bool:
        return seq_id in self._tables

    def block_table(self, seq_id: int) -> list[int]:
        return list(self._tables[seq_id].blocks)

    def get_computed_blocks(self, token_ids: list[int], cache_key: str | None = None) -> ComputedBlocks:
        """The longest cached run of full blocks at the start of token_ids. It
        never covers the last token: that one must be computed to get logits."""
        root = root_hash(cache_key)
        ids: list[int] = []
        hashes: list[bytes] = []
        if self.enable_prefix_caching:
            limit = (len(token_ids) - 1) // self.block_size
            for block_hash in iter_block_hashes(token_ids, self.block_size, root, 0, limit):
                block = self.pool.lookup(block_hash)
                if block is None:
                    break
                ids.append(block)
                hashes.append(block_hash)
        return ComputedBlocks(tuple(ids), tuple(hashes), root, len(token_ids), self.block_size)

    def allocate(
        self,
        seq_id: int,
        num_tokens: int,
        computed: ComputedBlocks | None = None,
        cache_key: str | None = None,
    ) -> list[int] | None:
        """A new table with slots for num_tokens tokens, starting with the
        computed (cached) blocks. Returns the whole table, or None if the pool
        is too short."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id} already has a block table")
        root = root_hash(cache_key)
        hit: tuple[int, ...] = ()
        if computed is not None:
            if computed.root != root:
                raise ValueError("computed blocks were looked up under another cache key")
            if any(
                self.pool.block_hashes[b] != h
                for b, h in zip(computed.block_ids, computed.block_hashes, strict=True)
            ):
                raise ValueError("computed blocks went stale: allocate right after get_computed_blocks")
            hit = computed.block_ids
        num_new = max(0, self.blocks_for(num_tokens) - len(hit))
        reviving = sum(1 for b in hit if self.pool.ref_counts[b] == 0)
        if num_new + reviving > self.pool.num_free:
            return None
        for block in hit:
            self.pool.touch(block)
        blocks = [*hit, *self.pool.allocate(num_new)]
        hashes = list(computed.block_hashes) if computed is not None else []
        self._tables[seq_id] = _Table(blocks, hashes, root)
        if computed is not None and self.enable_prefix_caching:
            self._queried_tokens += computed.num_queried_tokens
            self._hit_tokens += computed.num_tokens
        return list(blocks)

    def append_slots(self, seq_id: int, num_computed_tokens: int, num_tokens: int) -> SlotUpdate | None:
        """Grows the table to hold num_tokens tokens (lookahead slots of a
        multi-step decode included) before positions num_computed_tokens.. are
        written. Shared blocks in the written range are replaced by copies, and
        a private block there that the prefix cache holds leaves the cache: its
        contents are about to change. Returns None, changing nothing, if the
        pool is too short."""
        record = self._tables[seq_id]
        table = record.blocks
        refs, cached = self.pool.ref_counts, self.pool.block_hashes
        end = -(-num_tokens // self.block_size)
        first, stop = num_computed_tokens // self.block_size, min(end, len(table))
        if first + 1 >= stop:
            # The common case (decode, or a chunk into fresh blocks) writes at
            # most one block that already exists.
            touched = first < stop and (refs[table[first]] > 1 or cached[table[first]] is not None)
            written = [first] if touched else []
        else:
            written = [i for i in range(first, stop) if refs[table[i]] > 1 or cached[table[i]] is not None]
        num_new = end - len(table)
        if num_new <= 0 and not written:
            return [], []
        shared = [i for i in written if refs[table[i]] > 1]
        if max(0, num_new) + len(shared) > self.pool.num_free:
            return None
        for i in written:
            if refs[table[i]] == 1:
                self.pool.uncache(table[i])
        del record.hashes[first:]
        copies = []
        for i, dst in zip(shared, self.pool.allocate(len(shared)), strict=True):
            copies.append((table[i], dst))
            self.pool.release((table[i],))
            table[i] = dst
        new = self.pool.allocate(num_new) if num_new > 0 else []
        table.extend(new)
        return new, copies

    def fork(self, parent_id: int, child_id: int, num_tokens: int) -> None:
        """The child shares the parent's blocks holding its first num_tokens tokens."""
        if child_id in self._tables:
            raise ValueError(f"sequence {child_id} already has a block table")
        parent = self._tables[parent_id]
        count = self.blocks_for(num_tokens)
        if count > len(parent.blocks):
            raise ValueError(f"parent {parent_id} holds {len(parent.blocks)} blocks, fewer than {count}")
        blocks = parent.blocks[:count]
        for block in blocks:
            self.pool.touch(block)
        self._tables[child_id] = _Table(blocks, parent.hashes[: num_tokens // self.block_size], parent.root)

    def cache_blocks(self, seq_id: int, token_ids: list[int], num_computed_tokens: int) -> None:
        """Registers the sequence's blocks that became full of computed tokens."""
        if not self.enable_prefix_caching:
            return
        table = self._tables[seq_id]
        start, end = len(table.hashes), num_computed_tokens // self.block_size
        if end <= start:
            return
        parent = table.hashes[-1] if start else table.root
        for i, block_hash in enumerate(
            iter_block_hashes(token_ids, self.block_size, parent, start, end), start
        ):
            table.hashes.append(block_hash)
            self.pool.register(table.blocks[i], block_hash)

    def free(self, seq_id: int) -> None:
        """Drops the sequence's table; blocks nobody else holds become free, or
        cached-free when they hold a registered prefix."""
        table = self._tables.pop(seq_id)
        self.pool.release(reversed(table.blocks))

    def reset_prefix_cache(self) -> None:
        """Forgets every cached prefix. Only valid with no tables left, e.g. after
        the replica's worker was replaced and its KV cache is gone."""
        if self._tables:
            raise RuntimeError(f"{len(self._tables)} sequences still hold blocks")
        self.pool.reset_cache()

    def check_invariants(self) -> None:
        """Raises AssertionError unless every block is accounted for: free +
        cached-free + in use = total, ref counts = tables holding each block,
        and the hash map agrees with the blocks and the tables' hash chains."""
        holders: Counter[int] = Counter()
        for seq_id, table in self._tables.items():
            if len(set(table.blocks)) != len(table.blocks):
                raise AssertionError(f"sequence {seq_id} holds a block twice: {table.blocks}")
            if len(table.hashes) > len(table.blocks):
                raise AssertionError(
                    f"sequence {seq_id} has {len(table.hashes)} hashes for {len(table.blocks)} blocks"
                )
            for block, block_hash in zip(table.blocks, table.hashes, strict=False):
                cached = self.pool.block_hashes[block]
                if cached is not None and cached != block_hash:
                    raise AssertionError(f"sequence {seq_id}: block {block} is cached under another prefix")
            holders.update(table.blocks)
        self.pool.check(holders)
