"""Sequences waiting for admission, best first: lower priority value, then
earlier arrival. A preempted sequence keeps its place by arrival, so it goes
back ahead of everything that came after it."""

from __future__ import annotations

import heapq

from cairn.services.scheduler.sequence import Sequence


class WaitingQueue:
    def __init__(self) -> None:
        # Sort keys are unique (arrival counter, sample index), so entries
        # never compare their Sequence.
        self._heap: list[tuple[tuple, Sequence]] = []
        # Members by id; a discarded sequence's heap entry is skipped lazily.
        self._members: set[int] = set()

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, seq: Sequence) -> bool:
        return seq.seq_id in self._members

    def push(self, seq: Sequence) -> None:
        self._members.add(seq.seq_id)
        heapq.heappush(self._heap, (seq.sort_key, seq))

    def peek(self) -> Sequence | None:
        heap = self._heap
        while heap and heap[0][1].seq_id not in self._members:
            heapq.heappop(heap)
        return heap[0][1] if heap else None

    def pop(self) -> Sequence:
        seq = self.peek()
        if seq is None:
            raise IndexError("pop from an empty waiting queue")
        heapq.heappop(self._heap)
        self._members.discard(seq.seq_id)
        return seq

    def discard(self, seq: Sequence) -> None:
        self._members.discard(seq.seq_id)
        # Aborted low-ranked entries may never reach the top to be dropped;
        # rebuild once they are most of the heap so it cannot grow unbounded.
        if len(self._heap) > 2 * len(self._members) + 64:
            self._heap = [entry for entry in self._heap if entry[1].seq_id in self._members]
            heapq.heapify(self._heap)
