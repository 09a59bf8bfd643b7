"""Which adapter sits in which of the `max_loras` device slots, and which one to evict.

Pure bookkeeping (no tensors): the least recently used adapter that no live
sequence holds makes room; when every slot is held, loading another fails
with FailedPrecondition (the scheduler retries once sequences finish).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from cairn.common.errors import FailedPrecondition, NotFound


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    # The registry reference or the directory it was loaded from.
    source: str
    rank: int
    target_modules: tuple[str, ...]
    # base_model_name_or_path of its adapter_config.json.
    base_model: str
    slot: int


class AdapterPool:
    def __init__(self, max_loras: int) -> None:
        self.max_loras = max_loras
        # Least recently used first.
        self._resident: OrderedDict[str, LoadedAdapter] = OrderedDict()

    def __len__(self) -> int:
        return len(self._resident)

    def __contains__(self, name: str) -> bool:
        return name in self._resident

    @property
    def adapters(self) -> list[LoadedAdapter]:
        return sorted(self._resident.values(), key=lambda a: a.slot)

    def get(self, name: str) -> LoadedAdapter:
        """The resident adapter `name`, now the most recently used; NotFound if it is not resident."""
        adapter = self._resident.get(name)
        if adapter is None:
            resident = ", ".join(self._resident) or "none"
            raise NotFound(f"adapter {name!r} is not loaded on this worker (resident: {resident})")
        self._resident.move_to_end(name)
        return adapter

    def slot_for(self, name: str, held: set[int]) -> tuple[int, LoadedAdapter | None]:
        """(slot to load `name` into, the adapter that must be evicted from it, or None).

        `held` are the slots live sequences use. Reloading a resident name reuses its slot
        unless a sequence holds it.
        """
        current = self._resident.get(name)
        if current is not None:
            if current.slot in held:
                raise FailedPrecondition(
                    f"adapter {name!r} is in use by live sequences; it can be replaced once they finish"
                )
            return current.slot, current
        taken = {a.slot for a in self._resident.values()}
        free = [slot for slot in range(self.max_loras) if slot not in taken]
        if free:
            return free[0], None
        for adapter in self._resident.values():
            if adapter.slot not in held:
                return adapter.slot, adapter
        raise FailedPrecondition(
            f"all {self.max_loras} adapter slots (max_loras) are held by live sequences; "
            f"cannot load {name!r} until one of {list(self._resident)} is free"
        )

    def put(self, adapter: LoadedAdapter) -> None:
        """Records `adapter` in its slot, replacing whatever was there, as the most recently used."""
        for name, other in list(self._resident.items()):
            if other.slot == adapter.slot or name == adapter.name:
                del self._resident[name]
        self._resident[adapter.name] = adapter

    def remove(self, name: str, held: set[int]) -> LoadedAdapter | None:
        """Forgets `name`; None if it was not resident. FailedPrecondition while a sequence holds it."""
        adapter = self._resident.get(name)
        if adapter is None:
            return None
        if adapter.slot in held:
            raise FailedPrecondition(
                f"adapter {name!r} is in use by live sequences; unload it once they finish"
            )
        del self._resident[name]
        return adapter
