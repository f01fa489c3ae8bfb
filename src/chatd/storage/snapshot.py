"""A consistent snapshot of a running shard on its own disk: a RocksDB checkpoint plus the
media files it references, and the facts read back from it.

Why a checkpoint: it is RocksDB's own point-in-time copy of every column family at once,
made while writes go on. On the data directory's filesystem it hard-links the table files
(immutable once written), so it costs links, not a copy, however large the database.
Every batch the group committer wrote before it is in it whole; none after it is; no batch
is half in (a batch is one atomic WriteBatch). So every send acknowledged before the
snapshot began is in it, since a send is acknowledged only after its batch is written.

Media: messages may reference files kept outside RocksDB. The seam is `MediaSource`, a
listing of files; `MediaFolder` (everything under a directory, by default `<data>/media`)
is the simple implementation, and a media store that keeps its files elsewhere implements
the same one method. The listing is taken *after* the checkpoint, and the files are
hard-linked (or copied) into the snapshot at once. Provided a media store keeps the one
rule this needs (a file is stored before any message can reference it), every file the
checkpoint references is listed; a file deleted later stays in the snapshot through its
link. The cost of this simplicity: files
written after the checkpoint, which it does not reference, may come along too.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from chatd.storage import records
from chatd.storage.backup_format import DB_DIR, MEDIA_DIR, Summary, check_member_name
from chatd.storage.errors import StorageError
from chatd.storage.meta import RING
from chatd.storage.store import Store

#: How long a snapshot waits for RocksDB's background flush before checkpointing anyway
#: (the checkpoint then flushes what is left itself, holding the GIL meanwhile).
FLUSH_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class MediaFile:
    #: Its path relative to the media root, with "/" separators (media/<name> in a backup).
    name: str
    path: Path


class MediaSource(Protocol):
    """The media files a snapshot must carry: the seam a media store implements."""

    def files(self) -> Iterator[MediaFile]: ...


class MediaFolder:
    """Every regular file under `root` (none when it does not exist)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def files(self) -> Iterator[MediaFile]:
        if not self.root.is_dir():
            return
        for directory, subdirectories, names in os.walk(self.root):
            subdirectories.sort()  # a stable order, so two backups list alike
            for name in sorted(names):
                path = Path(directory, name)
                if path.is_file() and not path.is_symlink():
                    yield MediaFile(path.relative_to(self.root).as_posix(), path)


class SnapshotFailed(StorageError):
    """The snapshot could not be made (disk full, permissions, a bad media name …)."""


@dataclass(frozen=True, slots=True)
class DatabaseFacts:
    """What a database says about itself, read back from a snapshot or a restored copy."""

    shard: str
    ring_signature: str
    shards: tuple[str, ...]
    rocksdb_sequence: int
    summary: Summary


async def take_snapshot(store: Store, target: Path, media: MediaSource) -> None:
    """Checkpoint `store` into `target`/db and link the media into `target`/media.
    `target` must exist and be on the data directory's filesystem (so both are links).

    The memtables are flushed first by RocksDB's own threads while this task sleeps:
    the checkpoint holds the GIL (rocksdict does not release it), and the flush is most
    of its work. Measured: 81 ms of a stalled event loop for 50 MB written since the last
    flush, 13 ms after the flush (docs/operations.md)."""
    store.start_flush()
    with trio.move_on_after(FLUSH_WAIT_S):
        while store.flush_pending():  # noqa: ASYNC110  # RocksDB's flag, not a Trio event
            await trio.sleep(0.005)
    try:
        store.checkpoint(str(target / DB_DIR))
    except Exception as exc:  # rocksdict raises plain Exception for RocksDB errors
        raise SnapshotFailed(f"RocksDB could not make a checkpoint in {target}: {exc}") from exc
    await trio.to_thread.run_sync(link_media, media, target / MEDIA_DIR)


def link_media(media: MediaSource, destination: Path) -> int:
    """Hard-link (or copy, across filesystems) every media file into `destination`;
    returns how many. A file that vanished between the listing and the link was deleted
    after the checkpoint: leaving it out is what a later snapshot would do too."""
    count = 0
    for item in media.files():
        try:
            check_member_name(f"{MEDIA_DIR}/{item.name}")
        except StorageError as exc:
            raise SnapshotFailed(f"media file {item.path}: {exc}") from None
        path = destination / item.name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(item.path, path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise SnapshotFailed(f"media file {item.path}: {exc}") from exc
            try:
                shutil.copy2(item.path, path)
            except FileNotFoundError:
                continue
        count += 1
    return count


def read_facts(path: Path) -> DatabaseFacts:
    """Open the database at `path` read-only and read its ring record and `Summary`.
    Blocking (one seek or two per conversation): run it in a thread. Raises
    `SnapshotFailed` when it does not open or has no ring record."""
    try:
        store = Store.open_read_only(str(path))
    except Exception as exc:  # rocksdict raises plain Exception for RocksDB errors
        raise SnapshotFailed(f"the database in {path} does not open: {exc}") from exc
    try:
        ring = store.get(records.META, RING)
        if not (isinstance(ring, dict) and isinstance(ring.get("signature"), str)
                and isinstance(ring.get("shard"), str)):
            raise SnapshotFailed(f"the database in {path} has no ring record (storage/meta.py):"
                                 " it never served as a shard")
        shards = ring.get("shards")
        return DatabaseFacts(
            shard=ring["shard"], ring_signature=ring["signature"],
            shards=tuple(shards) if isinstance(shards, list) else (),
            rocksdb_sequence=store.latest_sequence_number(), summary=summarize(store))
    finally:
        store.close()


def summarize(store: Store) -> Summary:
    """Count the conversations and log entries, and digest every head: one jump per
    conversation (its first key, then its last), not a scan of every message."""
    digest = hashlib.sha256()
    conversations = entries = 0
    after: bytes | None = None
    while True:
        first = store.scan(records.MESSAGES, b"", after=after, limit=1)
        if not first:
            break
        (conversation_id, _seq), _message = first[0]
        prefix = records.u64(conversation_id)
        # The last key of the conversation: keys are 16 bytes, so prefix + 9 bytes of 0xff is
        # past all of them.
        last = store.range(records.MESSAGES, prefix, prefix + b"\xff" * 9, limit=1,
                           newest_first=True)
        (_id, head), _message = last[0]
        conversations += 1
        entries += head
        digest.update(records.pair(conversation_id, head))
        after = prefix + b"\xff" * 8
    return Summary(conversations, entries, digest.hexdigest())
