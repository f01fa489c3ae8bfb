from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from chatd.domain.ring import HashRing
from chatd.storage import Store, claim_ring
from chatd.storage.backup import BackupFailed, BackupRunning, Backups, BackupStream
from chatd.storage.backup_format import Manifest
from chatd.storage.snapshot import MediaFolder
from tests.storage.test_snapshot import append

RING = HashRing(["solo"])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store.open(str(tmp_path / "data"))
    claim_ring(store, RING.signature(), "solo", shards=RING.shards)
    try:
        yield store
    finally:
        store.close()


def backups_of(store: Store, tmp_path: Path) -> Backups:
    return Backups(store=store, workspace=tmp_path / "data" / "backup-tmp",
                   media=MediaFolder(tmp_path / "data" / "media"), chatd_version="9.9.9",
                   now_ms=lambda: 1_796_000_000_000)


async def read_all(stream: BackupStream) -> dict[str, bytes]:
    data = b"".join([chunk async for chunk in stream])
    await stream.aclose()
    members = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for member in archive:
            source = archive.extractfile(member)
            assert source is not None
            members[member.name] = source.read()
    return members


async def test_the_stream_is_the_snapshot_with_its_manifest_last(
        store: Store, tmp_path: Path) -> None:
    append(store, 3, range(1, 6))
    media = tmp_path / "data" / "media" / "2026"
    media.mkdir(parents=True)
    (media / "a.jpg").write_bytes(b"\xff\xd8jpeg")
    backups = backups_of(store, tmp_path)
    stream = await backups.start()
    append(store, 3, range(6, 8))  # after the snapshot: not in the backup
    members = await read_all(stream)

    names = list(members)
    assert names[-1] == "manifest.json"
    assert "db/CURRENT" in names and "media/2026/a.jpg" in names
    manifest = Manifest.from_json(members["manifest.json"])
    assert manifest == stream.manifest
    assert (manifest.shard, manifest.ring_signature, manifest.chatd_version) == (
        "solo", RING.signature(), "9.9.9")
    assert (manifest.summary.conversations, manifest.summary.log_entries) == (1, 5)
    assert manifest.created_at_ms == 1_796_000_000_000
    assert {entry.path for entry in manifest.files} == set(names) - {"manifest.json"}
    for entry in manifest.files:
        assert entry.size == len(members[entry.path])
        assert entry.sha256 == hashlib.sha256(members[entry.path]).hexdigest()
    # Closed: the scratch copy is gone and the next backup may start.
    assert not stream.scratch.exists()
    assert not backups.running


async def test_one_backup_at_a_time(store: Store, tmp_path: Path) -> None:
    backups = backups_of(store, tmp_path)
    first = await backups.start()
    with pytest.raises(BackupRunning, match="already running"):
        await backups.start()
    await read_all(first)
    second = await backups.start()
    await second.aclose()


async def test_a_stream_closed_midway_removes_its_snapshot(store: Store, tmp_path: Path) -> None:
    append(store, 3, range(1, 3))
    backups = backups_of(store, tmp_path)
    stream = await backups.start()
    assert any((stream.scratch / "db").iterdir())
    await stream.__anext__()
    await stream.aclose()  # what quart does when the client goes away
    assert not stream.scratch.exists()
    assert not backups.running


async def test_a_stream_dropped_unread_removes_its_snapshot(store: Store, tmp_path: Path) -> None:
    # quart never opens the body when the client leaves before the response starts.
    backups = backups_of(store, tmp_path)
    stream = await backups.start()
    scratch = stream.scratch
    del stream  # no reference cycle: freed here, not at the collector's next pass
    assert not scratch.exists()
    assert not backups.running


async def test_a_failed_snapshot_leaves_nothing_and_frees_the_next(
        store: Store, tmp_path: Path) -> None:
    workspace = tmp_path / "data" / "backup-tmp"
    workspace.parent.mkdir(exist_ok=True)
    workspace.write_text("a file where the workspace should be")
    backups = backups_of(store, tmp_path)
    with pytest.raises(BackupFailed, match="could not be taken"):
        await backups.start()
    assert not backups.running
    workspace.unlink()
    await (await backups.start()).aclose()


async def test_leftovers_of_an_interrupted_backup_are_removed(
        store: Store, tmp_path: Path) -> None:
    backups = backups_of(store, tmp_path)
    stream = await backups.start()
    scratch = stream.scratch
    backups.remove_leftovers()  # as at the next start, after a crash mid-backup
    assert not scratch.exists()
    await stream.aclose()


async def test_a_file_that_changes_size_ends_the_stream_without_a_manifest(
        store: Store, tmp_path: Path) -> None:
    backups = backups_of(store, tmp_path)
    stream = await backups.start()
    (stream.scratch / "media").mkdir(exist_ok=True)
    grows = stream.scratch / "media" / "grows"
    grows.write_bytes(b"x")
    sent = []
    with pytest.raises(BackupFailed, match="changed size"):
        async for chunk in stream:
            sent.append(chunk)
            if chunk == b"x":  # the file's content, sent once its header was
                with grows.open("ab") as file:
                    file.write(b"more")
                await trio.lowlevel.checkpoint()
    assert b"manifest.json" not in b"".join(sent)
    await stream.aclose()
