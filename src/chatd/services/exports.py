"""Data exports kept on this shard: their records, their files, their lifetime.

An export is personal data too, so it is kept only as long as it is needed: a record in
`exports` (storage/records.py) by its id, and the zip under `<data>/exports/<id>.zip`,
written to a temporary name and renamed once complete, deleted `gdpr.export_ttl` after
it was made (the sweeper, services/gdpr.py) or when its user is erased. An export id is
3 hex digits naming this shard (as a token names its home) and 128 random bits: it cannot
be guessed, and it is only ever served to its user (or the operator). One export is made
at a time per user (409 `export_running`).

Exports being made when the process stopped are removed at startup (`remove_leftovers`):
the task making them is gone. A shutdown does not wait for an export being written: the
writer (a worker thread) checks `stopping` between files and between chunks of a file,
and gives up (`ExportStopped`); its partial files are removed then, or at the next start
if the process died first.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from chatd.errors import ChatdError, Conflict, NotFound
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.storage import Batch, Store, records

log = logging.getLogger(__name__)

#: An export id: the shard's number in 3 hex digits, then 32 hex digits (128 bits).
EXPORT_ID_PATTERN = r"^[0-9a-f]{35}$"


@dataclass(frozen=True, slots=True)
class ExportRecord:
    export_id: str
    user_id: int
    created_at: int
    ready: bool
    size: int

    @classmethod
    def from_record(cls, export_id: str, data: Any) -> ExportRecord:
        return cls(export_id, int(data["user_id"]), int(data["created_at"]),
                   bool(data["ready"]), int(data.get("size", 0)))

    def to_record(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "created_at": self.created_at, "ready": self.ready,
                "size": self.size}


class ExportStopped(Exception):
    """The writer gave up: the shard is stopping."""


def unknown_export(export_id: str) -> NotFound:
    return NotFound(f"no export {export_id} that you can see (exports are kept for a "
                    "limited time)", code="unknown_export")


class ExportStore:
    def __init__(self, *, store: Store, commands: Commands, directory: Path, clock: Clock,
                 shard_number: int, ttl_s: float) -> None:
        self._store = store
        self._commands = commands
        self.directory = directory
        self._clock = clock
        self._shard_number = shard_number
        self._ttl_ms = int(ttl_s * 1000)
        #: Users with an export being made now (one at a time each).
        self._making: set[int] = set()
        #: Set when the shard stops: writers (in worker threads) stop at their next check.
        self.stopping = threading.Event()

    def path(self, export_id: str) -> Path:
        return self.directory / f"{export_id}.zip"

    def scratch(self, export_id: str) -> Path:
        """A directory for an export's parts while it is made (media files)."""
        return self.directory / f"{export_id}.parts"

    def find(self, export_id: str) -> ExportRecord | None:
        data = self._store.get(records.EXPORTS, export_id)
        return None if data is None else ExportRecord.from_record(export_id, data)

    def get(self, export_id: str, user_id: int | None) -> ExportRecord:
        """The export if `user_id` made it (None: the operator may see any); 404 alike
        for one that does not exist, has expired or is someone else's."""
        record = self.find(export_id)
        if record is None or (user_id is not None and record.user_id != user_id) \
                or self._expired(record):
            raise unknown_export(export_id)
        return record

    def _expired(self, record: ExportRecord) -> bool:
        return record.created_at + self._ttl_ms <= self._clock.now_ms()

    def expires_at(self, record: ExportRecord) -> int:
        return record.created_at + self._ttl_ms

    def of_user(self, user_id: int) -> list[ExportRecord]:
        return [ExportRecord.from_record(export_id, data)
                for export_id, data in self._store.scan(records.EXPORTS, b"")
                if data.get("user_id") == user_id]

    async def begin(self, user_id: int) -> ExportRecord:
        """Record a new export of the user, not ready yet; 409 while another is made."""
        if user_id in self._making:
            raise Conflict("an export of this account is being made; wait for it (GET "
                           "/me/export/{export_id}) before asking for another",
                           code="export_running")
        self._making.add(user_id)
        try:
            export_id = f"{self._shard_number:03x}{secrets.token_hex(16)}"
            record = ExportRecord(export_id, user_id, self._clock.now_ms(), False, 0)
            await self._commands.submit(lambda batch: batch.put(
                records.EXPORTS, export_id, record.to_record()))
        except BaseException:
            self._making.discard(user_id)
            raise
        return record

    def release(self, user_id: int) -> None:
        """The user's export is no longer being made (finished, failed or stopped)."""
        self._making.discard(user_id)

    async def finish(self, record: ExportRecord,
                     write: Callable[[Path, threading.Event], None]) -> None:
        """Write the zip with `write(path, stopping)` in a worker thread (zip compression
        must not stall the loop), under a temporary name, renamed into place once
        complete; then mark the export ready. On failure the export is removed; `write`
        raises ExportStopped once `stopping` is set."""
        try:
            await trio.to_thread.run_sync(self._write, record.export_id, write)
            size = self.path(record.export_id).stat().st_size
            ready = ExportRecord(record.export_id, record.user_id, record.created_at, True,
                                 size)
            await self._commands.submit(lambda batch: self._put_if_present(batch, ready))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.delete([record.export_id])
            raise
        finally:
            self.release(record.user_id)
        await trio.to_thread.run_sync(partial_rmtree, self.scratch(record.export_id))

    def _put_if_present(self, batch: Batch, record: ExportRecord) -> None:
        # An erasure may have deleted the export while it was being written.
        if self._store.get(records.EXPORTS, record.export_id) is None:
            raise unknown_export(record.export_id)
        batch.put(records.EXPORTS, record.export_id, record.to_record())

    def _write(self, export_id: str, write: Callable[[Path, threading.Event], None]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f"{export_id}.zip.tmp"
        write(temporary, self.stopping)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, self.path(export_id))

    async def delete(self, export_ids: list[str]) -> None:
        """The exports' records, then their files. When the records cannot be written
        (the shard is stopping) the files go anyway; the records of unfinished exports,
        and of finished ones whose file is gone, are dropped at the next start."""
        if not export_ids:
            return

        def apply(batch: Batch) -> None:
            for export_id in export_ids:
                batch.delete(records.EXPORTS, export_id)

        try:
            await self._commands.submit(apply)
        except ChatdError as exc:
            log.warning("export records left for the next start: %s", exc.message)
        for export_id in export_ids:
            for path in (self.path(export_id), self.directory / f"{export_id}.zip.tmp"):
                path.unlink(missing_ok=True)
            # Synchronous: this also runs while the shard stops (a worker thread could
            # not be awaited then); a scratch directory is a handful of files.
            partial_rmtree(self.scratch(export_id))

    async def delete_of(self, user_id: int) -> int:
        exports = [record.export_id for record in self.of_user(user_id)]
        await self.delete(exports)
        return len(exports)

    async def sweep(self) -> int:
        """Delete the exports past their lifetime; returns how many."""
        expired = [export_id for export_id, data in self._store.scan(records.EXPORTS, b"")
                   if self._expired(ExportRecord.from_record(export_id, data))
                   and int(data["user_id"]) not in self._making]
        await self.delete(expired)
        return len(expired)

    async def remove_leftovers(self) -> None:
        """At startup: exports that were being made when the process stopped, and files
        no record names (a crash between the file and its record)."""
        unfinished = [export_id for export_id, data in self._store.scan(records.EXPORTS, b"")
                      if not data.get("ready") or not self.path(export_id).exists()]
        await self.delete(unfinished)
        if not self.directory.is_dir():
            return
        for entry in self.directory.iterdir():
            export_id = entry.name.split(".", 1)[0]
            if self._store.get(records.EXPORTS, export_id) is None:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def partial_rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
