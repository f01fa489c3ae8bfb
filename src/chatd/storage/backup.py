"""Online backups, the server's side: a snapshot in a scratch directory, streamed as a tar.

`Backups.start()` makes the snapshot (`storage/snapshot.py`) in a directory of its own
under the workspace (`<data>/backup-tmp/`, on the data directory's filesystem so the
checkpoint is hard links) and reads its facts; the `BackupStream` it returns yields the
tar (`storage/backup_format.py`): every file with its sha256 computed as it is sent, then
the manifest. The scratch directory goes when the stream is closed, whether it ran to the
end or the client went away midway; if the stream is dropped without being closed (the
client left before the body began), when it is garbage-collected; if the process dies,
at the next start (`remove_leftovers`). Until then its links keep table files that
compaction has since dropped: a stalled backup costs disk space, which is why only one
runs at a time and a client that stops reading is cut off (`server.send_timeout`).

Where the snapshot goes is decided here, never by a request: the admin route takes no
path, so no token can make the server write or read anywhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import shutil
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

import trio

from chatd.storage.backup_format import (
    DB_DIR,
    MANIFEST_NAME,
    MEDIA_DIR,
    TAR_END,
    FileEntry,
    Manifest,
    tar_header,
    tar_padding,
)
from chatd.storage.errors import StorageError
from chatd.storage.snapshot import MediaSource, SnapshotFailed, read_facts, take_snapshot
from chatd.storage.store import Store

log = logging.getLogger(__name__)

#: Bytes read from disk (and hashed, in a worker thread) per step of the stream.
CHUNK_BYTES = 256 * 1024


class BackupRunning(StorageError):
    """Another backup of this shard is being taken or streamed."""


class BackupFailed(StorageError):
    """The snapshot could not be made; nothing was sent."""


class Backups:
    """Takes backups of one shard's store, one at a time."""

    def __init__(self, *, store: Store, workspace: Path, media: MediaSource,
                 chatd_version: str, now_ms: Callable[[], int]) -> None:
        self._store = store
        self._workspace = workspace
        self._media = media
        self._chatd_version = chatd_version
        self._now_ms = now_ms
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def remove_leftovers(self) -> None:
        """Delete what an interrupted backup left in the workspace. Call it at startup,
        before any backup: the data directory's lock means this process alone uses it."""
        if not self._workspace.is_dir():
            return
        leftovers = sorted(path.name for path in self._workspace.iterdir())
        shutil.rmtree(self._workspace)
        if leftovers:
            log.info("removed what an interrupted backup left in %s: %s", self._workspace,
                     ", ".join(leftovers))

    async def start(self) -> BackupStream:
        """Snapshot the store now and return the stream that sends it. Raises
        `BackupRunning` while another backup is under way, `BackupFailed` when the
        snapshot cannot be made."""
        if self._running:
            raise BackupRunning("a backup of this shard is already running; retry when it "
                                "has finished")
        self._running = True
        scratch = self._workspace / f"snapshot-{secrets.token_hex(6)}"
        try:
            created_at_ms = self._now_ms()
            scratch.mkdir(parents=True)
            await take_snapshot(self._store, scratch, self._media)
            facts = await trio.to_thread.run_sync(read_facts, scratch / DB_DIR)
        except BaseException as exc:
            _discard(scratch, self._finished)
            if isinstance(exc, SnapshotFailed | OSError):
                raise BackupFailed(f"the backup could not be taken: {exc}") from exc
            raise
        manifest = Manifest(
            chatd_version=self._chatd_version, created_at_ms=created_at_ms,
            shard=facts.shard, ring_signature=facts.ring_signature, shards=facts.shards,
            rocksdb_sequence=facts.rocksdb_sequence, summary=facts.summary, files=())
        log.info("backup snapshot taken (RocksDB sequence %d, %d conversations); streaming",
                 facts.rocksdb_sequence, facts.summary.conversations)
        return BackupStream(scratch, manifest, self._finished)

    def _finished(self) -> None:
        self._running = False


class BackupStream:
    """The tar of one snapshot, as an async iterator of bytes (a quart response body).

    `aclose()` deletes the snapshot and lets the next backup start; quart calls it when
    the response ends, completed or not. `manifest` has its file list once the stream
    has ended."""

    def __init__(self, scratch: Path, manifest: Manifest, finished: Callable[[], None]) -> None:
        self.scratch = scratch
        self._sent = _Sent(manifest)
        # The generator holds no reference to this object, so dropping the stream frees
        # it at once (no cycle waiting for the collector) and runs the finalizer below.
        self._chunks = _tar_stream(scratch, self._sent)
        # If the stream is never iterated nor closed, its generator's `finally` never runs:
        # this does the same when the stream is dropped. Runs once, whichever comes first.
        self._cleanup = weakref.finalize(self, _discard, scratch, finished)

    @property
    def manifest(self) -> Manifest:
        return self._sent.manifest

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            self._cleanup()


class _Sent:
    """The manifest, completed by the stream as it ends."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest


async def _tar_stream(scratch: Path, sent: _Sent) -> AsyncGenerator[bytes, None]:
    entries = []
    for path in await trio.to_thread.run_sync(_snapshot_files, scratch):
        name = path.relative_to(scratch).as_posix()
        size = path.stat().st_size
        yield tar_header(name, size, int(path.stat().st_mtime))
        digest = hashlib.sha256()
        count = 0
        with path.open("rb") as file:
            while chunk := await trio.to_thread.run_sync(_read_hashing, file, digest.update):
                count += len(chunk)
                if count > size:
                    break
                yield chunk
        if count != size:
            # Snapshot files never change; this one did, so the tar header lies. The
            # stream ends without a manifest, and the client refuses what it got.
            raise BackupFailed(f"{name} changed size while it was sent ({size} bytes, "
                               f"then {count})")
        yield tar_padding(size)
        entries.append(FileEntry(name, size, digest.hexdigest()))
    sent.manifest = dataclasses.replace(sent.manifest, files=tuple(entries))
    data = sent.manifest.to_json()
    yield tar_header(MANIFEST_NAME, len(data), sent.manifest.created_at_ms // 1000)
    yield data + tar_padding(len(data)) + TAR_END


def _snapshot_files(scratch: Path) -> list[Path]:
    """The checkpoint's files, then the media files, each in name order."""
    media = scratch / MEDIA_DIR
    return [*sorted(path for path in (scratch / DB_DIR).iterdir() if path.is_file()),
            *sorted(path for path in media.rglob("*") if path.is_file())]


def _read_hashing(file: BinaryIO, hash_update: Callable[[bytes], None]) -> bytes:
    # Both the read and the hash release the GIL: in a worker thread they leave the
    # event loop free.
    chunk = file.read(CHUNK_BYTES)
    hash_update(chunk)
    return chunk


def _discard(scratch: Path, finished: Callable[[], None]) -> None:
    try:
        shutil.rmtree(scratch, ignore_errors=True)
    finally:
        finished()
