"""Rows written by batches that have not landed, readable by the commands after them.

Commands of one batch run one after another before anything is written, so a command
must see what the ones before it put or deleted (a reaction replaced twice in one
batch, a message deleted right after it was edited). `PendingRows` holds such rows of
one family, grouped by (conversation, target), until their batch lands; reads merge
them over the store's rows. After a failed write (`forget_all`) the store is the truth.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Generic, TypeVar

from chatd.storage import Batch

V = TypeVar("V")

Group = tuple[int, int]


class _Row(Generic[V]):
    """One write: the value put, or None for a delete (an object of its own, so that a
    landing batch removes its own write only, never a later one's)."""

    __slots__ = ("value",)

    def __init__(self, value: V | None) -> None:
        self.value = value


class PendingRows(Generic[V]):
    def __init__(self) -> None:
        self._groups: dict[Group, dict[int, _Row[V]]] = {}

    def put(self, batch: Batch, group: Group, item: int, value: V | None) -> None:
        """Note a write (None: a delete) that `batch` carries."""
        row = _Row(value)
        self._groups.setdefault(group, {})[item] = row
        batch.after_commit.append(partial(self._landed, group, item, row))

    def _landed(self, group: Group, item: int, row: _Row[V]) -> None:
        rows = self._groups.get(group)
        if rows is not None and rows.get(item) is row:
            del rows[item]
            if not rows:
                del self._groups[group]

    def get(self, group: Group, item: int, stored: Callable[[], V | None]) -> V | None:
        rows = self._groups.get(group)
        row = rows.get(item) if rows is not None else None
        return stored() if row is None else row.value

    def merged(self, group: Group, stored: dict[int, V]) -> dict[int, V]:
        """The group's rows: `stored` (item -> value) with the pending writes laid over."""
        rows = self._groups.get(group)
        if not rows:
            return stored
        merged = dict(stored)
        for item, row in rows.items():
            if row.value is None:
                merged.pop(item, None)
            else:
                merged[item] = row.value
        return merged

    def forget_all(self) -> None:
        self._groups.clear()

    def forget_where(self, belongs: Callable[[int], bool]) -> None:
        for group in [group for group in self._groups if belongs(group[0])]:
            del self._groups[group]
