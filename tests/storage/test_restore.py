from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import trio

from chatd.domain.ring import HashRing
from chatd.storage import Store, claim_ring, records
from chatd.storage.backup import Backups
from chatd.storage.backup_format import BackupInvalid
from chatd.storage.restore import RestoreRefused, restore
from chatd.storage.snapshot import MediaFolder
from tests.storage.test_snapshot import append, message

RING = HashRing(["a", "b"])


async def take_backup(data: Path) -> bytes:
    store = Store.open(str(data))
    try:
        claim_ring(store, RING.signature(), "a", shards=RING.shards)
        append(store, 1, range(1, 4))
        append(store, 2, range(1, 3))
        (data / "media" / "m").mkdir(parents=True)
        (data / "media" / "m" / "pic.png").write_bytes(b"png bytes")
        backups = Backups(store=store, workspace=data / "backup-tmp",
                          media=MediaFolder(data / "media"), chatd_version="0.1.0",
                          now_ms=lambda: 1_796_000_000_000)
        stream = await backups.start()
        tar = b"".join([chunk async for chunk in stream])
        await stream.aclose()
        return tar
    finally:
        store.close()


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    """A backup directory as `chatd backup` leaves it, of shard "a" with two
    conversations and a media file."""
    tar = trio.run(take_backup, tmp_path / "data")
    directory = tmp_path / "backup"
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
        archive.extractall(directory, filter="data")
    return directory


def test_a_restored_directory_is_the_backed_up_shard(backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "restored"
    done = restore(backup, target)
    assert (done.manifest.shard, done.db_files, done.media_files) == ("a", len(
        done.manifest.files) - 1, 1)
    assert (target / "CURRENT").is_file()
    assert target.stat().st_mode & 0o777 == 0o700
    assert (target / "media" / "m" / "pic.png").read_bytes() == b"png bytes"
    assert not [path for path in tmp_path.iterdir() if ".restoring-" in path.name]
    store = Store.open(str(target))
    try:
        claim_ring(store, RING.signature(), "a", shards=RING.shards)  # same ring: accepted
        assert store.get(records.MESSAGES, (1, 3)) == message(1, 3)
        assert [key for key, _ in store.scan(records.MESSAGES, records.u64(2))] == [
            (2, 1), (2, 2)]
    finally:
        store.close()


def test_an_empty_existing_directory_may_be_the_target(backup: Path, tmp_path: Path) -> None:
    (tmp_path / "restored").mkdir()
    restore(backup, tmp_path / "restored")
    assert (tmp_path / "restored" / "CURRENT").is_file()


def test_a_directory_holding_anything_is_refused(backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "restored"
    target.mkdir()
    (target / "keep-me").write_text("old data")
    with pytest.raises(RestoreRefused, match="is not empty"):
        restore(backup, target)
    assert [path.name for path in target.iterdir()] == ["keep-me"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RestoreRefused, match="not a directory"):
        restore(backup, tmp_path / "a-file")


def refused(backup: Path, tmp_path: Path, complaint: str) -> None:
    target = tmp_path / "restored"
    with pytest.raises(BackupInvalid, match=complaint):
        restore(backup, target)
    # Nothing is left behind: neither the target nor a staging directory.
    assert not target.exists()
    assert not [path for path in tmp_path.iterdir() if ".restoring-" in path.name]


def table_file(backup: Path) -> Path:
    return next(path for path in (backup / "db").iterdir() if path.suffix == ".sst")


def test_a_backup_cut_short_has_no_manifest_and_is_refused(backup: Path, tmp_path: Path) -> None:
    (backup / "manifest.json").unlink()
    refused(backup, tmp_path, "no manifest.json")


def test_a_missing_file_is_refused(backup: Path, tmp_path: Path) -> None:
    table_file(backup).unlink()
    refused(backup, tmp_path, "incomplete")


def test_an_unlisted_file_is_refused(backup: Path, tmp_path: Path) -> None:
    (backup / "db" / "000999.sst").write_bytes(b"stowaway")
    refused(backup, tmp_path, "does not list")


def test_a_truncated_file_is_refused(backup: Path, tmp_path: Path) -> None:
    path = table_file(backup)
    path.write_bytes(path.read_bytes()[:-1])
    refused(backup, tmp_path, "the manifest says")


def test_a_file_altered_in_place_is_refused(backup: Path, tmp_path: Path) -> None:
    path = table_file(backup)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    refused(backup, tmp_path, "does not match the manifest")


def test_a_manifest_edited_to_another_shard_is_refused(backup: Path, tmp_path: Path) -> None:
    # Every file matches, but the database says it is shard "a": the manifest lies.
    document = json.loads((backup / "manifest.json").read_text())
    document["shard"] = "b"
    (backup / "manifest.json").write_text(json.dumps(document))
    refused(backup, tmp_path, "not the one the manifest describes")


def test_a_manifest_claiming_other_logs_is_refused(backup: Path, tmp_path: Path) -> None:
    document = json.loads((backup / "manifest.json").read_text())
    document["summary"]["log_entries"] += 1
    (backup / "manifest.json").write_text(json.dumps(document))
    refused(backup, tmp_path, "not the one the manifest describes")


def test_what_is_not_a_backup_is_refused(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    refused(tmp_path / "nothing", tmp_path, "no manifest.json")
    refused(tmp_path / "absent", tmp_path, "is not a directory")
