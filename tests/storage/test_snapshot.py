from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatd.domain.models import Message
from chatd.domain.ring import HashRing
from chatd.storage import Batch, Store, claim_ring, records
from chatd.storage.backup_format import Summary
from chatd.storage.records import pair
from chatd.storage.snapshot import (
    MediaFile,
    MediaFolder,
    SnapshotFailed,
    link_media,
    read_facts,
    take_snapshot,
)

RING = HashRing(["a", "b"])


def message(conversation_id: int, seq: int) -> Message:
    return Message(seq, conversation_id, seq, 7, 8, f"c{seq}", "text/plain", f"m{seq}", seq)


def append(store: Store, conversation_id: int, seqs: range) -> None:
    batch = Batch()
    batch.durable = True
    for seq in seqs:
        batch.put(records.MESSAGES, (conversation_id, seq), message(conversation_id, seq))
    store.write(batch)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(str(tmp_path / "data"))
    claim_ring(store, RING.signature(), "b", shards=RING.shards)
    try:
        yield store
    finally:
        store.close()


class NoMedia:
    def files(self) -> Iterator[MediaFile]:
        return iter(())


async def test_a_snapshot_holds_every_write_before_it_and_none_after(
        store: Store, tmp_path: Path) -> None:
    for conversation_id, head in [(5, 3), (9, 40), (2**62, 1)]:
        append(store, conversation_id, range(1, head + 1))
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    await take_snapshot(store, snapshot, NoMedia())
    append(store, 5, range(4, 10))  # after: not in it
    append(store, 11, range(1, 3))

    facts = read_facts(snapshot / "db")
    heads = hashlib.sha256(pair(5, 3) + pair(9, 40) + pair(2**62, 1)).hexdigest()
    assert facts.summary == Summary(conversations=3, log_entries=44, heads_sha256=heads)
    assert (facts.shard, facts.ring_signature, facts.shards) == ("b", RING.signature(),
                                                                 ("a", "b"))
    copy = Store.open_read_only(str(snapshot / "db"))
    try:
        assert [key for key, _ in copy.scan(records.MESSAGES, records.u64(5))] == \
            [(5, seq) for seq in (1, 2, 3)]
        assert copy.scan(records.MESSAGES, records.u64(11)) == []
        assert copy.get(records.MESSAGES, (9, 40)) == message(9, 40)
    finally:
        copy.close()
    # The table files are links to the live database's, not copies.
    tables = [path for path in (snapshot / "db").iterdir() if path.suffix == ".sst"]
    assert tables and all(os.stat(path).st_nlink >= 2 for path in tables)


async def test_the_store_reopens_after_a_checkpoint(tmp_path: Path) -> None:
    # A Checkpoint object kept alive would hold the database's lock past close().
    store = Store.open(str(tmp_path / "data"))
    (tmp_path / "snapshot").mkdir()
    await take_snapshot(store, tmp_path / "snapshot", NoMedia())
    store.close()
    Store.open(str(tmp_path / "data")).close()


async def test_a_snapshot_where_one_exists_fails_clearly(store: Store, tmp_path: Path) -> None:
    (tmp_path / "snapshot" / "db").mkdir(parents=True)
    with pytest.raises(SnapshotFailed, match="could not make a checkpoint"):
        await take_snapshot(store, tmp_path / "snapshot", NoMedia())


def test_facts_of_a_database_that_never_served_or_of_no_database_are_refused(
        tmp_path: Path) -> None:
    Store.open(str(tmp_path / "unclaimed")).close()
    with pytest.raises(SnapshotFailed, match="no ring record"):
        read_facts(tmp_path / "unclaimed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SnapshotFailed, match="does not open"):
        read_facts(tmp_path / "empty")


def test_a_media_folder_lists_its_regular_files_in_order(tmp_path: Path) -> None:
    root = tmp_path / "media"
    assert list(MediaFolder(root).files()) == []  # no folder yet: no media
    for name in ["b/2.jpg", "a.png", "b/1.jpg", "b/c/deep.bin"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    (root / "link").symlink_to(root / "a.png")
    assert [item.name for item in MediaFolder(root).files()] == [
        "a.png", "b/1.jpg", "b/2.jpg", "b/c/deep.bin"]


async def test_media_is_linked_in_and_outlives_its_deletion(store: Store, tmp_path: Path) -> None:
    root = tmp_path / "data" / "media"
    (root / "x").mkdir(parents=True)
    (root / "x" / "photo.jpg").write_bytes(b"jpeg")
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    await take_snapshot(store, snapshot, MediaFolder(root))
    (root / "x" / "photo.jpg").unlink()
    assert (snapshot / "media" / "x" / "photo.jpg").read_bytes() == b"jpeg"


class Listing:
    """A media store of its own: the seam takes any source of (name, path)."""

    def __init__(self, *items: MediaFile) -> None:
        self.items = items

    def files(self) -> Iterator[MediaFile]:
        return iter(self.items)


def test_a_media_name_that_climbs_out_fails_the_snapshot(tmp_path: Path) -> None:
    (tmp_path / "evil").write_bytes(b"x")
    with pytest.raises(SnapshotFailed, match="not a backup member name"):
        link_media(Listing(MediaFile("../escape", tmp_path / "evil")), tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_a_media_file_gone_before_it_is_linked_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "kept").write_bytes(b"k")
    count = link_media(Listing(MediaFile("gone", tmp_path / "gone"),
                               MediaFile("kept", tmp_path / "kept")), tmp_path / "out")
    assert count == 1
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["kept"]
