"""`Purger`: deleted bytes leave the disk within a bounded time.

A deletion in RocksDB writes a tombstone; the old value stays in the write-ahead log
until the memtables it covers are flushed, and in table files until a compaction
rewrites them. Every `Store.write` notes the key ranges its deletes touched (the
owner's writes and the replica's applies alike, so both shards purge), and this task,
at most every `storage.purge_interval` seconds, flushes and compacts them
(`Store.purge`). `purge_now` runs one at once (`POST /admin/compact`).

Flushing and compacting block their caller for as long as RocksDB takes, but (unlike a
synced write, docs STACK-NOTES) let other threads run meanwhile: measured with
`python -m bench.purge`, the event loop beside a 3.5 s purge never waited more than
45 ms. So the purge runs in a worker thread.
"""

from __future__ import annotations

import logging

import trio

from chatd.storage.store import Store

log = logging.getLogger(__name__)


class Purger:
    def __init__(self, store: Store, *, interval: float) -> None:
        self._store = store
        self._interval = interval
        # One purge at a time: the background pass and an operator's request.
        self._lock = trio.Lock()
        #: Purges done (for tests and /metrics-style checks).
        self.purges = 0

    async def purge_now(self) -> None:
        """Flush and compact what deletes have touched; returns when it is done."""
        async with self._lock:
            ranges = self._store.take_purge()
            try:
                await trio.to_thread.run_sync(self._store.purge, ranges)
            except BaseException:
                self._store.want_purge(ranges)  # asked again at the next pass
                raise
            self._store.purged(ranges)  # no longer owed after a restart either
            self.purges += 1

    async def run(self) -> None:
        """The background task: a purge every `interval` seconds when anything was
        deleted since the last one."""
        while True:
            await trio.sleep(self._interval)
            if not self._store.purge_wanted:
                continue
            try:
                await self.purge_now()
            except Exception:
                log.exception("purging deleted records failed; retrying at the next interval")
