"""A bounded map of recently handled part ids (duplicate detection without unbounded memory)."""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.capacity = capacity
        self._ids: OrderedDict[str, str] = OrderedDict()

    def add(self, part_id: str, note: str = "") -> bool:
        """Remember part_id with a note (how it was handled); False when it was already there."""
        if part_id in self._ids:
            return False
        self._ids[part_id] = note
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def note(self, part_id: str) -> str | None:
        return self._ids.get(part_id)

    def __contains__(self, part_id: object) -> bool:
        return part_id in self._ids
