"""The LoRA adapter slots of one replica's worker, as its engine manages them.

The worker holds at most `max_loras` adapters. The engine decides which: it
loads an adapter before the first step of a request that needs it and, when
every slot is taken, unloads the least recently used adapter that no request
registered on the replica uses. The worker is never left to evict on its
own, so an adapter the scheduler has queued a request for cannot disappear
before that request's first step.
"""

from __future__ import annotations

from collections import Counter, OrderedDict


class AdapterSlots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # name -> rank, least recently used first.
        self._resident: OrderedDict[str, int] = OrderedDict()
        # Slots taken by adapters being loaded (not usable by steps yet).
        self._loading: set[str] = set()
        # Requests registered on the replica (waiting for the load, queued or running) per adapter.
        self._users: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def full(self) -> bool:
        return len(self._resident) + len(self._loading) >= self.capacity

    @property
    def resident(self) -> dict[str, int]:
        """Resident adapters and their ranks, least recently used first."""
        return dict(self._resident)

    def is_resident(self, name: str) -> bool:
        return name in self._resident

    def acquire(self, name: str) -> None:
        """A request that uses `name` is registered on the replica."""
        self._users[name] += 1
        if name in self._resident:
            self._resident.move_to_end(name)

    def release(self, name: str) -> None:
        """A request that used `name` left the replica (finished, aborted or moved)."""
        self._users[name] -= 1
        if self._users[name] <= 0:
            del self._users[name]

    def victim(self) -> str | None:
        """The least recently used resident adapter no registered request uses, if any."""
        return next((name for name in self._resident if not self._users[name]), None)

    def reserve(self, name: str) -> None:
        """A slot for `name`, whose load has started."""
        self._loading.add(name)

    def loaded(self, name: str, rank: int) -> None:
        self._loading.discard(name)
        self._resident[name] = rank

    def evicted(self, name: str) -> None:
        """`name` is off the worker (unloaded, or its load failed)."""
        self._loading.discard(name)
        self._resident.pop(name, None)

    def clear(self) -> None:
        """The worker is gone, and its adapters with it."""
        self._resident.clear()
        self._loading.clear()
        self._users.clear()
