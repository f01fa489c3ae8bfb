"""Which stored records belong to which range, and reading a range's records out.

A record belongs to a range when its family is one of a conversation's
(`records.CONVERSATION_FAMILIES`, which says where the conversation id sits in the key)
and the ring puts that conversation in the range. Everything else a shard stores (the
accounts of users homed on it, device cursors, meta) is not replicated by range.
"""

from __future__ import annotations

from collections.abc import Iterator

from chatd.domain.ring import HashRing
from chatd.storage import Store, records
from chatd.storage.records import read_u64
from chatd.storage.store import Operation


class RangeRecords:
    def __init__(self, store: Store, ring: HashRing) -> None:
        self._store = store
        self._ring = ring
        # The ring hash of a conversation id is computed once per id seen (ranges are
        # asked of every op of every batch).
        self._range_cache: dict[int, str] = {}

    def range_of_key(self, family: str, key: bytes) -> str | None:
        offset = records.CONVERSATION_FAMILIES.get(family)
        if offset is None or len(key) < offset + 8:
            return None
        return self.range_of(read_u64(key, offset))

    def range_of(self, conversation_id: int) -> str:
        found = self._range_cache.get(conversation_id)
        if found is None:
            if len(self._range_cache) > 1_000_000:
                self._range_cache.clear()
            found = self._range_cache[conversation_id] = self._ring.shard_for(conversation_id)
        return found

    def partition(self, ops: list[Operation], wanted: set[str]) -> dict[str, list[Operation]]:
        """The ops that belong to the `wanted` ranges, by range, in their order."""
        parts: dict[str, list[Operation]] = {}
        for op in ops:
            range_ = self.range_of_key(op[0], op[1])
            if range_ is not None and range_ in wanted:
                parts.setdefault(range_, []).append(op)
        return parts

    def chunks(self, range_: str, *, max_bytes: int, rows_per_read: int = 512,
               ) -> Iterator[list[Operation]]:
        """Every record of the range, as puts, in chunks of about `max_bytes`. Each
        chunk is read when asked for (a copy awaits between chunks), so writes made
        meanwhile may or may not be in it: the owner ships those afterwards anyway."""
        chunk: list[Operation] = []
        size = 0
        for family, offset in records.CONVERSATION_FAMILIES.items():
            after: bytes | None = None
            while True:
                rows = self._store.scan_raw(family, after=after, limit=rows_per_read)
                for key, value in rows:
                    if len(key) >= offset + 8 and self.range_of(read_u64(key, offset)) == range_:
                        chunk.append((family, key, value))
                        size += len(key) + len(value) + 16
                        if size >= max_bytes:
                            yield chunk
                            chunk, size = [], 0
                if len(rows) < rows_per_read:
                    break
                after = rows[-1][0]
        if chunk:
            yield chunk

    def own_keys(self, range_: str, family: str, *, after: bytes | None,
                 upto: bytes | None, rows_per_read: int = 512) -> list[bytes]:
        """The keys of `family` this shard holds for the range with after < key <= upto
        (from the start when `after` is None, to the end when `upto` is None)."""
        return [key for key, _ in self.own_rows(range_, family, after=after, upto=upto,
                                                rows_per_read=rows_per_read)]

    def own_rows(self, range_: str, family: str, *, after: bytes | None,
                 upto: bytes | None, rows_per_read: int = 512) -> list[tuple[bytes, bytes]]:
        """As `own_keys`, with each key's stored value."""
        offset = records.CONVERSATION_FAMILIES[family]
        found: list[tuple[bytes, bytes]] = []
        while True:
            rows = self._store.scan_raw(family, after=after, limit=rows_per_read)
            for key, value in rows:
                if upto is not None and key > upto:
                    return found
                if len(key) >= offset + 8 and self.range_of(read_u64(key, offset)) == range_:
                    found.append((key, value))
            if len(rows) < rows_per_read:
                return found
            after = rows[-1][0]
