"""Which replica a request goes to: the longest prefix-cache hit, then the least load.

The prompt's block hashes are computed once and probed against each
replica's pool, so placing costs one pass of hashing however many replicas
there are. A hit only counts blocks the replica could serve right now.

Affinity must not starve the other replicas (every request sharing one system
prompt would otherwise pile onto the replica that cached it first), so only
replicas within a slack of the least loaded one compete on cache hits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from cairn.services.scheduler.block_manager import BlockManager
from cairn.services.scheduler.prefix_hash import iter_block_hashes, root_hash

T = TypeVar("T")

# A replica may serve this many requests more than the least loaded one (or a
# quarter more, when that is larger) and still win on a cache hit.
MIN_LOAD_SLACK = 4


@dataclass(frozen=True)
class Candidate(Generic[T]):
    replica: T
    block_manager: BlockManager
    # Requests it is serving now.
    load: int
    # Whether its worker already holds the request's LoRA adapter (no load before the first step).
    has_adapter: bool = False


def prompt_block_hashes(token_ids: Sequence[int], block_size: int, cache_key: str | None) -> list[bytes]:
    """Hashes of the prompt's full blocks a cache hit may cover (never the last token's)."""
    return list(
        iter_block_hashes(token_ids, block_size, root_hash(cache_key), 0, (len(token_ids) - 1) // block_size)
    )


def cached_blocks(block_manager: BlockManager, hashes: Sequence[bytes]) -> int:
    """How many leading blocks of the prompt the replica holds."""
    if not block_manager.enable_prefix_caching:
        return 0
    lookup = block_manager.pool.lookup
    for count, block_hash in enumerate(hashes):
        if lookup(block_hash) is None:
            return count
    return len(hashes)


def choose(candidates: Sequence[Candidate[T]], hashes: Sequence[bytes]) -> T | None:
    """Among candidates not much busier than the least loaded, the one with the
    most cached blocks, then one holding the request's adapter, then the fewest
    requests, then the most free blocks; None if there is none."""
    if not candidates:
        return None
    least = min(c.load for c in candidates)
    limit = least + max(MIN_LOAD_SLACK, least // 4)
    best = min(
        (c for c in candidates if c.load <= limit),
        key=lambda c: (
            -cached_blocks(c.block_manager, hashes),
            not c.has_adapter,
            c.load,
            -c.block_manager.num_free_blocks,
        ),
    )
    return best.replica
