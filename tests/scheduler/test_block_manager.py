"""Block manager behaviour, one case at a time (the stateful test mixes them)."""

from __future__ import annotations

import pytest

from cairn.services.scheduler.block_manager import BlockManager
from cairn.services.scheduler.prefix_hash import iter_block_hashes, root_hash

BS = 4


def tokens(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


def computed_seq(
    manager: BlockManager, seq_id: int, token_ids: list[int], cache_key: str | None = None
) -> list[int]:
    """Allocates with prefix lookup, 'computes' every token and registers the full blocks."""
    computed = manager.get_computed_blocks(token_ids, cache_key)
    table = manager.allocate(seq_id, len(token_ids), computed, cache_key)
    assert table is not None
    manager.cache_blocks(seq_id, token_ids, len(token_ids))
    return table


def test_allocate_and_free_account_for_every_block() -> None:
    manager = BlockManager(8, BS)
    table = manager.allocate(1, 9)
    assert table is not None and len(table) == 3
    assert manager.num_free_blocks == 5 and manager.usage == pytest.approx(3 / 8)
    manager.check_invariants()
    manager.free(1)
    assert manager.num_free_blocks == 8 and manager.usage == 0.0
    manager.check_invariants()


def test_allocate_that_does_not_fit_changes_nothing() -> None:
    manager = BlockManager(4, BS)
    assert manager.allocate(1, 12) is not None
    assert manager.allocate(2, 8) is None
    assert not manager.has_table(2)
    assert manager.append_slots(1, 12, 20) is None
    assert manager.block_table(1) == [0, 1, 2] and manager.num_free_blocks == 1
    manager.check_invariants()


def test_append_slots_adds_blocks_only_at_block_boundaries() -> None:
    manager = BlockManager(8, BS)
    manager.allocate(1, 3)
    assert manager.append_slots(1, 3, 4) == ([], [])
    new, copies = manager.append_slots(1, 4, 5)
    assert len(new) == 1 and copies == []
    # Lookahead for a 4-step decode: positions 5..8 need a third block.
    new, _ = manager.append_slots(1, 5, 9)
    assert len(new) == 1 and len(manager.block_table(1)) == 3


def test_prefix_hit_covers_full_blocks_but_never_the_last_token() -> None:
    manager = BlockManager(16, BS)
    prompt = tokens(10)
    first = computed_seq(manager, 1, prompt)
    # Same prompt: blocks 0 and 1 are full; the partial third is not cached.
    hit = manager.get_computed_blocks(prompt)
    assert hit.block_ids == tuple(first[:2]) and hit.num_tokens == 8
    # A prompt of exactly two full blocks reuses only the first: its last
    # token must be computed to produce logits.
    hit = manager.get_computed_blocks(prompt[:8])
    assert hit.block_ids == (first[0],)
    # A different second block ends the match there.
    assert manager.get_computed_blocks([*prompt[:4], 99, *prompt[5:]]).block_ids == (first[0],)


def test_prefix_hit_shares_blocks_and_counts_the_hit_rate() -> None:
    manager = BlockManager(16, BS)
    prompt = tokens(10)
    first = computed_seq(manager, 1, prompt)
    second = computed_seq(manager, 2, prompt)
    assert second[:2] == first[:2] and second[2] != first[2]
    assert manager.pool.ref_counts[first[0]] == 2
    # Queried 10 + 10 prompt tokens; 8 of the second were hits.
    assert manager.prefix_cache_hit_rate == pytest.approx(8 / 20)
    manager.check_invariants()


def test_cache_keys_separate_prefixes() -> None:
    manager = BlockManager(16, BS)
    prompt = tokens(9)
    computed_seq(manager, 1, prompt, cache_key="adapter-a")
    assert manager.get_computed_blocks(prompt, "adapter-b").block_ids == ()
    assert manager.get_computed_blocks(prompt).block_ids == ()
    assert len(manager.get_computed_blocks(prompt, "adapter-a").block_ids) == 2


def test_freed_blocks_stay_cached_and_come_back_on_a_hit() -> None:
    manager = BlockManager(4, BS)
    prompt = tokens(9)
    first = computed_seq(manager, 1, prompt)
    manager.free(1)
    assert manager.num_free_blocks == 4 and manager.num_cached_free_blocks == 2
    # All four blocks are free (two cached); a hit revives two and needs one new.
    hit = manager.get_computed_blocks(prompt)
    assert manager.allocate(2, 9, hit) is not None
    assert manager.block_table(2)[:2] == first[:2]
    assert manager.num_cached_free_blocks == 0 and manager.num_free_blocks == 1
    manager.check_invariants()


def test_reviving_cached_blocks_counts_against_free_blocks() -> None:
    manager = BlockManager(3, BS)
    prompt = tokens(9)
    computed_seq(manager, 1, prompt)
    manager.free(1)
    hit = manager.get_computed_blocks(prompt)
    assert len(hit.block_ids) == 2
    # 9 tokens need 3 blocks: 2 revived + 1 new = all 3; 13 would need a 4th.
    assert manager.allocate(2, 13, hit) is None
    manager.check_invariants()
    assert manager.allocate(2, 9, hit) is not None


def test_cached_free_blocks_are_evicted_least_recently_released_first() -> None:
    manager = BlockManager(6, BS)
    a, b = tokens(9, 0), tokens(9, 100)
    computed_seq(manager, 1, a)
    computed_seq(manager, 2, b)
    manager.free(1)
    manager.free(2)
    assert manager.num_cached_free_blocks == 4
    # Two uncached free blocks go first, then one eviction: a's tail block.
    assert manager.allocate(3, 12) is not None
    assert len(manager.get_computed_blocks(a).block_ids) == 1
    assert len(manager.get_computed_blocks(b).block_ids) == 2
    # Touching b's prefix makes it recent; a's head block goes next.
    hit = manager.get_computed_blocks(b)
    manager.allocate(4, 9, hit)
    manager.free(4)
    manager.allocate(5, 4)
    assert manager.get_computed_blocks(a).block_ids == ()
    assert len(manager.get_computed_blocks(b).block_ids) == 2
    manager.check_invariants()


def test_free_blocks_are_used_before_cached_ones() -> None:
    manager = BlockManager(4, BS)
    computed_seq(manager, 1, tokens(9))
    manager.free(1)
    manager.allocate(2, 4)
    assert manager.num_cached_free_blocks == 2


def test_fork_shares_blocks_and_copies_the_partial_tail_on_first_write() -> None:
    manager = BlockManager(8, BS)
    parent = computed_seq(manager, 1, tokens(6))
    manager.fork(1, 2, 6)
    assert manager.block_table(2) == parent
    assert [manager.pool.ref_counts[b] for b in parent] == [2, 2]
    manager.check_invariants()
    # The child writes position 6, in the shared partial block: it gets a copy.
    new, copies = manager.append_slots(2, 6, 7)
    assert new == [] and len(copies) == 1 and copies[0][0] == parent[1]
    child = manager.block_table(2)
    assert child[0] == parent[0] and child[1] == copies[0][1] != parent[1]
    # The parent is the tail's only holder now and writes in place.
    assert manager.append_slots(1, 6, 7) == ([], [])
    manager.check_invariants()
    manager.free(1)
    manager.free(2)
    assert manager.num_free_blocks == 8
    manager.check_invariants()


def test_fork_of_a_prefix_takes_only_the_blocks_holding_it() -> None:
    manager = BlockManager(8, BS)
    parent = computed_seq(manager, 1, tokens(10))
    manager.fork(1, 2, 4)
    assert manager.block_table(2) == parent[:1]
    with pytest.raises(ValueError, match="fewer than"):
        manager.fork(1, 3, 13)


def test_full_blocks_register_once_computed_and_duplicates_too() -> None:
    manager = BlockManager(8, BS)
    prompt = tokens(8)
    manager.allocate(1, 8)
    manager.allocate(2, 8)
    manager.cache_blocks(1, prompt, 5)
    assert manager.pool.num_cached == 1
    manager.cache_blocks(2, prompt, 8)
    hashes = list(iter_block_hashes(prompt, BS, root_hash(None)))
    assert manager.pool.lookup(hashes[0]) == manager.block_table(1)[0]
    assert manager.pool.lookup(hashes[1]) == manager.block_table(2)[1]
    # Seq 2 computed the same first block; once seq 1's copy is evicted, seq
    # 2's still anchors the chain.
    seq2 = manager.block_table(2)
    manager.free(1)
    manager.allocate(3, 24)
    assert manager.get_computed_blocks([*prompt, 0]).block_ids == tuple(seq2)
    manager.check_invariants()


def test_stale_lookup_is_refused() -> None:
    manager = BlockManager(2, BS)
    prompt = tokens(5)
    computed_seq(manager, 1, prompt)
    manager.free(1)
    hit = manager.get_computed_blocks(prompt)
    manager.allocate(2, 8)  # evicts the cached block
    with pytest.raises(ValueError, match="stale"):
        manager.allocate(3, 5, hit)


def test_prefix_caching_off_never_hits() -> None:
    manager = BlockManager(8, BS, enable_prefix_caching=False)
    prompt = tokens(9)
    computed_seq(manager, 1, prompt)
    manager.free(1)
    assert manager.get_computed_blocks(prompt).block_ids == ()
    assert manager.num_cached_free_blocks == 0


def test_reset_prefix_cache_forgets_everything() -> None:
    manager = BlockManager(8, BS)
    prompt = tokens(9)
    computed_seq(manager, 1, prompt)
    with pytest.raises(RuntimeError, match="still hold"):
        manager.reset_prefix_cache()
    manager.free(1)
    manager.reset_prefix_cache()
    assert manager.get_computed_blocks(prompt).block_ids == ()
    assert manager.num_free_blocks == 8 and manager.num_cached_free_blocks == 0
    manager.check_invariants()


def test_check_invariants_catches_a_wrong_ref_count() -> None:
    manager = BlockManager(4, BS)
    manager.allocate(1, 5)
    manager.pool.ref_counts[0] += 1
    with pytest.raises(AssertionError, match="ref count"):
        manager.check_invariants()


def test_check_invariants_catches_a_leaked_block() -> None:
    manager = BlockManager(4, BS)
    manager.allocate(1, 5)
    manager.pool.ref_counts[3] = 1  # held by no table, on no free list
    with pytest.raises(AssertionError):
        manager.check_invariants()


def test_rewriting_a_cached_block_takes_it_out_of_the_cache() -> None:
    manager = BlockManager(8, BS)
    parent = computed_seq(manager, 1, tokens(8))
    # The child holds 3 of the first block's 4 tokens and will write its own
    # 4th: once the parent is gone it holds that cached block alone, but the
    # cache must stop advertising the parent's contents for it.
    manager.fork(1, 2, 3)
    manager.free(1)
    assert manager.append_slots(2, 3, 4) == ([], [])
    assert manager.block_table(2) == parent[:1]
    assert manager.get_computed_blocks(tokens(9)).block_ids == ()
    manager.check_invariants()
