"""Stateful property test of the block manager.

Hypothesis interleaves allocation (with prefix lookups), computing tokens,
appending tokens, forks, frees and preemptions (free + re-allocate) over a
small pool. Beside the manager it keeps a simulated KV cache: computing a
position writes a digest of the whole token prefix into that slot, and every
sequence must read its own prefix back through its block table. After every
step all invariants must hold, writes may only land in blocks nobody else
holds (copy-on-write), and evictions must take the least recently released
cached block; at the end every block is free or cached-free.
"""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cairn.services.scheduler.block_manager import BlockManager

BS = 4
NUM_BLOCKS = 12
# A few shared prompt heads make prefix hits common.
HEADS = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 7, 7], [5] * 12]


def digest(cache_key: str | None, token_ids: list[int]) -> bytes:
    return hashlib.blake2b(repr((cache_key, token_ids)).encode(), digest_size=8).digest()


class _Seq:
    def __init__(self, token_ids: list[int], cache_key: str | None, num_computed: int) -> None:
        self.token_ids = token_ids
        self.cache_key = cache_key
        self.num_computed = num_computed


class BlockManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.manager = BlockManager(NUM_BLOCKS, BS)
        self.pool = self.manager.pool
        self.kv: list[list[bytes | None]] = [[None] * BS for _ in range(NUM_BLOCKS)]
        self.seqs: dict[int, _Seq] = {}
        self.next_id = 0
        # The model of eviction order: cached-free blocks, least recent first.
        self.lru: list[int] = []

    # -------------------------------------------------------------- helpers

    def _track(self, action):
        """Runs `action` and checks that any eviction it caused took the least
        recently released cached blocks, and only once no uncached block was left."""
        before = list(self.lru)
        result = action()
        refs, hashes = self.pool.ref_counts, self.pool.block_hashes
        revived = [b for b in before if refs[b] > 0 and hashes[b] is not None]
        evicted = [b for b in before if hashes[b] is None]
        remaining = [b for b in before if b not in revived]
        assert evicted == remaining[: len(evicted)], f"evicted {evicted}, LRU order was {remaining}"
        if evicted:
            event("eviction")
            assert self.manager.num_free_blocks == self.manager.num_cached_free_blocks
        if revived:
            event("prefix hit on a cached-free block")
        self.lru = [b for b in before if b not in revived and b not in evicted]
        return result

    def _release(self, seq_id: int) -> None:
        table = self.manager.block_table(seq_id)
        self.manager.free(seq_id)
        for block in reversed(table):
            if self.pool.ref_counts[block] == 0 and self.pool.block_hashes[block] is not None:
                self.lru.append(block)

    def _admit(self, seq_id: int, token_ids: list[int], cache_key: str | None) -> bool:
        hit = self.manager.get_computed_blocks(token_ids, cache_key)
        assert hit.num_tokens < len(token_ids)
        free_before = self.manager.num_free_blocks
        table = self._track(lambda: self.manager.allocate(seq_id, len(token_ids), hit, cache_key))
        if hit.block_ids:
            event("prefix hit")
        if table is None:
            event("pool full")
            assert self.manager.num_free_blocks == free_before and not self.manager.has_table(seq_id)
            return False
        assert table[: len(hit.block_ids)] == list(hit.block_ids)
        self.seqs[seq_id] = _Seq(token_ids, cache_key, hit.num_tokens)
        return True

    # -------------------------------------------------------------- rules

    @rule(
        head=st.sampled_from(HEADS),
        tail=st.lists(st.integers(0, 9), max_size=10),
        cache_key=st.sampled_from([None, None, "lora"]),
    )
    def allocate(self, head: list[int], tail: list[int], cache_key: str | None) -> None:
        self.next_id += 1
        self._admit(self.next_id, head + tail, cache_key)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), lookahead=st.integers(0, 3))
    def compute(self, data: st.DataObject, lookahead: int) -> None:
        """Computes a sequence's uncomputed tokens (plus lookahead slots), as a step would."""
        seq_id = data.draw(st.sampled_from(sorted(self.seqs)))
        seq = self.seqs[seq_id]
        if seq.num_computed == len(seq.token_ids):
            return
        update = self._track(
            lambda: self.manager.append_slots(seq_id, seq.num_computed, len(seq.token_ids) + lookahead)
        )
        if update is None:
            return
        for src, dst in update[1]:
            event("copy-on-write")
            self.kv[dst] = list(self.kv[src])
        table = self.manager.block_table(seq_id)
        for position in range(seq.num_computed, len(seq.token_ids)):
            block = table[position // BS]
            assert self.pool.ref_counts[block] == 1, f"write into block {block} that others hold"
            self.kv[block][position % BS] = digest(seq.cache_key, seq.token_ids[: position + 1])
        seq.num_computed = len(seq.token_ids)
        self.manager.cache_blocks(seq_id, seq.token_ids, seq.num_computed)

    @precondition(lambda self: self.seqs)
    @rule(data=st.data(), new=st.lists(st.integers(0, 9), min_size=1, max_size=5))
    def append_tokens(self, data: st.DataObject, new: list[int]) -> None:
        seq = self.seqs[data.draw(st.sampled_from(sorted(self.seqs)))]
        seq.token_ids = seq.token_ids + new

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        parent_id = data.draw(st.sampled_from(sorted(self.seqs)))
        parent = self.seqs[parent_id]
        held = len(self.manager.block_table(parent_id)) * BS
        num_tokens = data.draw(st.integers(1, min(len(parent.token_ids), held)))
        self.next_id += 1
        self.manager.fork(parent_id, self.next_id, num_tokens)
        child_tokens = parent.token_ids[:num_tokens]
        self.seqs[self.next_id] = _Seq(child_tokens, parent.cache_key, min(parent.num_computed, num_tokens))

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        seq_id = data.draw(st.sampled_from(sorted(self.seqs)))
        seq = self.seqs.pop(seq_id)
        self._release(seq_id)
        # Nothing was allocated since: every full computed block is still
        # cached (other sequences may have cached even more of the prefix).
        hit = self.manager.get_computed_blocks(seq.token_ids, seq.cache_key)
        assert len(hit.block_ids) >= min(seq.num_computed, len(seq.token_ids) - 1) // BS

    @precondition(lambda self: self.seqs)
    @rule(data=st.data())
    def preempt(self, data: st.DataObject) -> None:
        """Recompute preemption: free, then come back with the same tokens."""
        seq_id = data.draw(st.sampled_from(sorted(self.seqs)))
        seq = self.seqs.pop(seq_id)
        self._release(seq_id)
        self._admit(seq_id, seq.token_ids, seq.cache_key)

    # -------------------------------------------------------------- checks

    @invariant()
    def blocks_are_accounted_for(self) -> None:
        self.manager.check_invariants()

    @invariant()
    def every_sequence_reads_its_own_prefix(self) -> None:
        for seq_id, seq in self.seqs.items():
            table = self.manager.block_table(seq_id)
            for position in range(seq.num_computed):
                found = self.kv[table[position // BS]][position % BS]
                assert found == digest(seq.cache_key, seq.token_ids[: position + 1]), (seq_id, position)

    def teardown(self) -> None:
        for seq_id in list(self.seqs):
            self._release(seq_id)
        self.manager.check_invariants()
        assert self.manager.num_free_blocks == NUM_BLOCKS
        assert self.manager.usage == 0.0


BlockManagerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestBlockManagerMachine = BlockManagerMachine.TestCase
