"""`Store`: reads and batched writes of the records in `records`, over one RocksDB.

The API is generic over record families (`records.USERS`, `records.MESSAGES` …): `get`,
`scan` and `range` read, `Batch.put` and `Batch.delete` write. What a record *means* (a
message writes its dedup row too, a removed member loses three rows) is the services'
business; this module only stores. Reads are point lookups and short range scans made
directly from the event loop: they are microseconds each (see docs/architecture.md).
Writes only ever go through a `Batch`, so a command's effects land together or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from rocksdict import (
    AccessType,
    BottommostLevelCompaction,
    Checkpoint,
    CompactOptions,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

from chatd.storage import records
from chatd.storage.errors import StoreInUse
from chatd.storage.records import Family

K = TypeVar("K")
V = TypeVar("V")

#: One buffered write: (family name, key, packed value or None for a delete).
Operation = tuple[str, bytes, bytes | None]

#: Key prefixes (bytes) whose deleted records a purge compacts, per family: the first 8
#: bytes of each deleted key (a conversation id, for conversation records).
PURGE_PREFIX = 8
#: Past this many prefixes in one family, the purge compacts the whole family.
MAX_PURGE_PREFIXES = 4096
#: Up to this many prefixes of a family are compacted one by one; more, as one span.
SEPARATE_PURGE_RANGES = 4
#: A purge owed is also a row of the meta family, `purge:<family>:<prefix, hex>`, put in
#: the write that made it owed and deleted once a purge has done it: a shard killed (or
#: stopped) before its next pass still owes it when it starts again.
PURGE_MARK = "purge:"


class Batch:
    """The writes of one or more commands, applied atomically by `Store.write`.

    Operations are buffered (values packed as they are put, so a value that cannot be
    stored fails the command that put it) so that a command that fails halfway can be
    taken back out (`mark` / `rollback_to`) without touching the commands before it.
    `after_commit` callbacks run, in order, only once the batch is durable: that is where
    fan-out and other effects that must never precede durability are hooked in.
    `before_write` callbacks run once all commands are in, just before the write: state
    that many commands of a batch change (a receipt watermark) is written there once, at
    its final value, instead of once per command.
    """

    def __init__(self) -> None:
        self._operations: list[Operation] = []
        self.after_commit: list[Callable[[], None]] = []
        self.before_write: list[Callable[[], None]] = []
        self._seen: dict[Hashable, None] = {}
        #: Whether the write must be synced (when the store syncs at all).
        self.durable = False

    @property
    def operations(self) -> list[Operation]:
        return self._operations

    def put(self, family: Family[K, V], key: K, value: V) -> None:
        self._operations.append((family.name, family.encode_key(key), family.pack(value)))

    def delete(self, family: Family[K, Any], key: K) -> None:
        self._operations.append((family.name, family.encode_key(key), None))

    def extend_raw(self, operations: list[Operation]) -> None:
        """Writes already encoded elsewhere (a replica applying its owner's batch). The
        family names must be ones this store has (`Store.knows`)."""
        self._operations.extend(operations)

    def first_time(self, key: Hashable) -> bool:
        """True the first time `key` is named in this batch: for per-batch bookkeeping."""
        if key in self._seen:
            return False
        self._seen[key] = None
        return True

    def mark(self) -> tuple[int, int, int, int]:
        return (len(self._operations), len(self.after_commit), len(self.before_write),
                len(self._seen))

    def rollback_to(self, mark: tuple[int, int, int, int]) -> None:
        del self._operations[mark[0]:]
        del self.after_commit[mark[1]:]
        del self.before_write[mark[2]:]
        while len(self._seen) > mark[3]:
            self._seen.popitem()


_PURGE_MARK_VALUE = records.META.pack(True)


def _purge_mark(family: str, prefix: bytes) -> bytes:
    return f"{PURGE_MARK}{family}:{prefix.hex()}".encode()


#: The scratch column family `Store._roll_manifest` makes and drops.
_ROLL_FAMILY = "purge-manifest-roll"


def _families_at(path: str) -> list[str]:
    try:
        return list(Rdict.list_cf(path))
    except Exception:  # no database there yet
        return []


def _successor(prefix: bytes) -> bytes | None:
    """The first key after every key that starts with `prefix` (None: no end)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Store:
    def __init__(self, db: Rdict, sync: bool) -> None:
        self._db = db
        names = [family.name for family in records.FAMILIES]
        self._families = {name: db.get_column_family(name) for name in names}
        self._handles = {name: db.get_column_family_handle(name) for name in names}
        self._write_options = WriteOptions()
        self._write_options.sync = sync
        self._unsynced = WriteOptions()
        self._unsynced.sync = False
        self.sync = sync
        # What deletes have left on disk since the last purge: family name -> key
        # prefixes (None: the whole family). Filled by every write, the owner's and the
        # replica's alike, so both purge the same bytes.
        self._to_purge: dict[str, set[bytes] | None] = {}
        self._owed_before_start()

    @classmethod
    def open(cls, path: str, *, sync: bool = True) -> Store:
        os.makedirs(path, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        # Deleted bytes must leave the disk (storage/purge.py): a recycled WAL file would
        # keep old records in its unused tail, and an archived one (TTL or size limit)
        # would keep them whole. These are RocksDB's defaults; stated so they stay so.
        options.set_recycle_log_file_num(0)
        options.set_wal_ttl_seconds(0)
        options.set_wal_size_limit_mb(0)
        # A new MANIFEST at every change of the set of table files (see `_roll_manifest`).
        options.set_max_manifest_file_size(0)
        families = {family.name: Options(raw_mode=True) for family in records.FAMILIES}
        if _ROLL_FAMILY in _families_at(path):
            # A purge stopped between making and dropping it: open it to drop it.
            families[_ROLL_FAMILY] = Options(raw_mode=True)
        try:
            db = Rdict(path, options, column_families=families)
        except Exception as exc:
            # rocksdict raises a bare Exception; RocksDB's message names the LOCK file
            # ("While lock file: <path>/LOCK: Resource temporarily unavailable").
            if "lock" in str(exc).lower():
                raise StoreInUse(f"{path} is in use by another process ({exc})") from exc
            raise
        if _ROLL_FAMILY in families:
            db.drop_column_family(_ROLL_FAMILY)
        return cls(db, sync)

    @classmethod
    def open_read_only(cls, path: str) -> Store:
        """Open a database only to read it (a checkpoint, a backup being restored): no
        lock is taken and nothing is written to it but rocksdict's own settings file,
        rewritten as it was. A checkpoint may hold write-ahead log files, hence
        `error_if_log_file_exist=False`."""
        families = {family.name: Options(raw_mode=True) for family in records.FAMILIES}
        db = Rdict(path, Options(raw_mode=True), column_families=families,
                   access_type=AccessType.read_only(False))
        return cls(db, sync=False)

    def close(self) -> None:
        # RocksDB keeps its lock while any column-family view or handle is alive.
        self._families.clear()
        self._handles.clear()
        self._db.close()

    # -- writes ---------------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Apply a batch atomically; durable on return when the store syncs."""
        for callback in batch.before_write:
            callback()
        batch.before_write.clear()
        if not batch.operations:
            return
        handles = self._handles
        write_batch = WriteBatch(raw_mode=True)
        deleted: list[tuple[str, bytes]] = []
        for family, key, value in batch.operations:
            if value is None:
                write_batch.delete(key, handles[family])
                deleted.append((family, key))
            else:
                write_batch.put(key, value, handles[family])
        for mark in self._new_purge_marks(deleted):
            write_batch.put(mark, _PURGE_MARK_VALUE, handles[records.META.name])
        self._db.write(write_batch, self._write_options if batch.durable else self._unsynced)
        for family, key in deleted:
            self._note_deleted(family, key)

    # -- purging deleted bytes ------------------------------------------------------------

    def _new_purge_marks(self, deleted: list[tuple[str, bytes]]) -> set[bytes]:
        """The meta rows that record, in the same write, the purges `deleted` makes owed
        (those not owed already)."""
        marks = set()
        for family, key in deleted:
            prefix = bytes(key[:PURGE_PREFIX])
            owed = self._to_purge.get(family, set())
            if owed is None or prefix not in owed:
                marks.add(_purge_mark(family, prefix))
        return marks

    def _owed_before_start(self) -> None:
        """What the last run of this database left to purge (its meta rows)."""
        for raw, _ in self.scan_raw_prefix(records.META.name, PURGE_MARK.encode()):
            _, family, prefix = raw.decode().split(":", 2)
            if family in self._families:
                self._note_deleted(family, bytes.fromhex(prefix))

    def purged(self, ranges: dict[str, set[bytes] | None]) -> None:
        """`ranges` were purged (`purge`): their meta rows go, but for those owed again
        since. Not noted for a purge itself (that would owe one after every purge)."""
        write_batch = WriteBatch(raw_mode=True)
        meta = self._handles[records.META.name]
        for family, prefixes in ranges.items():
            owed = self._to_purge.get(family, set())
            if owed is None:
                continue
            done = ({bytes.fromhex(raw.decode().split(":", 2)[2]) for raw, _ in
                     self.scan_raw_prefix(records.META.name, f"{PURGE_MARK}{family}:".encode())}
                    if prefixes is None else prefixes)
            for prefix in done - owed:
                write_batch.delete(_purge_mark(family, prefix), meta)
        if len(write_batch):
            self._db.write(write_batch, self._write_options)

    def scan_raw_prefix(self, family_name: str, prefix: bytes) -> list[tuple[bytes, bytes]]:
        iterator = self._families[family_name].iter()
        iterator.seek(prefix)
        found: list[tuple[bytes, bytes]] = []
        while iterator.valid() and iterator.key().startswith(prefix):
            found.append((iterator.key(), iterator.value()))
            iterator.next()
        return found

    def _note_deleted(self, family: str, key: bytes) -> None:
        prefixes = self._to_purge.get(family, set())
        if prefixes is None:
            return
        prefixes.add(bytes(key[:PURGE_PREFIX]))
        self._to_purge[family] = None if len(prefixes) > MAX_PURGE_PREFIXES else prefixes

    @property
    def purge_wanted(self) -> bool:
        """Whether something was deleted since the last purge."""
        return bool(self._to_purge)

    def take_purge(self) -> dict[str, set[bytes] | None]:
        """What to purge (and forget it: a purge that fails is asked for again by the
        caller with `want_purge`)."""
        taken, self._to_purge = self._to_purge, {}
        return taken

    def want_purge(self, ranges: dict[str, set[bytes] | None]) -> None:
        for family, prefixes in ranges.items():
            if prefixes is None:
                self._to_purge[family] = None
            else:
                for prefix in prefixes:
                    self._note_deleted(family, prefix)

    def purge(self, ranges: dict[str, set[bytes] | None]) -> None:
        """Make deleted records leave the disk. RocksDB keeps a deleted (or overwritten)
        value in the write-ahead log until every memtable that it covers is flushed, and
        in table files until a compaction rewrites them without it. So: flush every
        family (a WAL file is dropped only once all families' data in it is flushed),
        then compact each deleted key range down to the bottommost level, forced, so the
        files holding the old values are rewritten. Blocks for as long as RocksDB takes
        (run it in a thread: storage/purge.py). Live iterators and checkpoints would keep
        old versions; the store holds none between calls, and backups delete theirs."""
        for family in self._families.values():
            family.flush(wait=True)
        options = CompactOptions()
        options.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        options.set_exclusive_manual_compaction(False)
        for name, prefixes in ranges.items():
            view = self._families.get(name)
            if view is None:
                continue
            if prefixes is None:
                view.compact_range(None, None, options)
                continue
            ordered = sorted(prefixes)
            if len(ordered) <= SEPARATE_PURGE_RANGES:
                for prefix in ordered:
                    view.compact_range(prefix, _successor(prefix), options)
            else:
                # One span from the first to the last: a forced bottommost compaction
                # rewrites every table file its range touches, so many small ranges in
                # one file rewrite that file many times (measured: 100 conversations
                # in a 1M-message family, 43 s one by one, under 1 s as one span).
                view.compact_range(ordered[0], _successor(ordered[-1]), options)
        # The flush switched to a new WAL file; make sure the old ones are gone now,
        # not at RocksDB's next periodic cleanup.
        self._db.flush_wal(True)
        self._roll_manifest()

    def _roll_manifest(self) -> None:
        """Start a new MANIFEST, so the old one, and the keys it holds, leave the disk.
        The MANIFEST is the log of changes to the set of table files, and each entry
        names a file's smallest and largest key: a deleted key that was one (a freed
        handle, a user's whole key range) stays in that log after the compaction that
        dropped it. With `max_manifest_file_size` 0 RocksDB writes a new MANIFEST, a
        snapshot of the live files, at each change; the last change of a purge is a
        compaction, whose snapshot is taken before it, so one more change is made here
        (a scratch family made and dropped: nothing is written to any record)."""
        scratch = self._db.create_column_family(_ROLL_FAMILY, Options(raw_mode=True))
        del scratch  # the view holds a handle; a dropped family must have none left
        self._db.drop_column_family(_ROLL_FAMILY)

    # -- snapshots ------------------------------------------------------------------------

    def start_flush(self) -> None:
        """Ask RocksDB to flush every family's memtable in its background threads, without
        waiting: a checkpoint made once that is done has little left to flush itself, and
        that flush is what it would spend holding the GIL (docs/operations.md)."""
        for family in self._families.values():
            family.flush(wait=False)

    def flush_pending(self) -> bool:
        """Whether a flush asked for by `start_flush` is still under way."""
        for family in self._families.values():
            for name in ("rocksdb.mem-table-flush-pending", "rocksdb.num-immutable-mem-table"):
                if family.property_int_value(name):
                    return True
        return False

    def checkpoint(self, path: str) -> None:
        """A consistent copy of the whole database, every family at one point, in `path`
        (which must not exist; its parent must): RocksDB hard-links the table files when
        `path` is on the same filesystem and copies the few small ones (MANIFEST, CURRENT,
        OPTIONS, the write-ahead log not yet flushed). Blocks the caller, GIL included,
        for as long as RocksDB takes (mostly flushing memtables)."""
        # Never kept: like a column-family handle, a live Checkpoint keeps the database's
        # lock after close() (checked: a reopen then fails with "lock hold by current
        # process").
        Checkpoint(self._db).create_checkpoint(path)

    def latest_sequence_number(self) -> int:
        """RocksDB's sequence number of the last write: the same in a checkpoint as in the
        database at the moment it was made."""
        number: int = self._db.latest_sequence_number()
        return number

    # -- reads ----------------------------------------------------------------------------

    def knows(self, family_name: str) -> bool:
        return family_name in self._handles

    def scan_raw(self, family_name: str, *, after: bytes | None = None,
                 limit: int) -> list[tuple[bytes, bytes]]:
        """Encoded (key, value) pairs of one family in key order, after the key `after`
        (from the start if None), at most `limit`: for copying records to a replica."""
        iterator = self._families[family_name].iter()
        if after is None:
            iterator.seek_to_first()
        else:
            iterator.seek(after + b"\x00")
        found: list[tuple[bytes, bytes]] = []
        while iterator.valid() and len(found) < limit:
            found.append((iterator.key(), iterator.value()))
            iterator.next()
        return found

    def get(self, family: Family[K, V], key: K) -> V | None:
        raw: bytes | None = self._families[family.name].get(family.encode_key(key))
        return None if raw is None else family.unpack(key, raw)

    def scan(self, family: Family[K, V], prefix: bytes, *, after: bytes | None = None,
             limit: int | None = None) -> list[tuple[K, V]]:
        """The records whose key starts with `prefix` (b"" for all), in key order, starting
        after the key `after` if given, at most `limit` of them."""
        iterator = self._families[family.name].iter()
        iterator.seek(prefix if after is None else after + b"\x00")
        found: list[tuple[K, V]] = []
        while iterator.valid() and (limit is None or len(found) < limit):
            raw_key: bytes = iterator.key()
            if not raw_key.startswith(prefix):
                break
            key = family.decode_key(raw_key)
            found.append((key, family.unpack(key, iterator.value())))
            iterator.next()
        return found

    def range(self, family: Family[K, V], start: bytes, stop: bytes, *, limit: int,
              newest_first: bool = False) -> list[tuple[K, V]]:
        """Records with start <= key < stop, at most `limit`, taken from the low end (or
        the high end with `newest_first`); always returned in ascending key order."""
        iterator = self._families[family.name].iter()
        found: list[tuple[K, V]] = []
        if newest_first:
            iterator.seek_for_prev(stop)
            if iterator.valid() and iterator.key() >= stop:
                iterator.prev()
        else:
            iterator.seek(start)
        while iterator.valid() and len(found) < limit:
            raw_key: bytes = iterator.key()
            if not start <= raw_key < stop:
                break
            key = family.decode_key(raw_key)
            found.append((key, family.unpack(key, iterator.value())))
            if newest_first:
                iterator.prev()
            else:
                iterator.next()
        if newest_first:
            found.reverse()
        return found
