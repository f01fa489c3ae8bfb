"""Restore: check a backup directory against its manifest and make it a data directory.

The steps, each refusing with a message that names what is wrong:

1. The target must not exist, or be an empty directory: restore never mixes a backup
   with other data, nor overwrites a shard's database.
2. The backup must be complete: a manifest, every file it lists and nothing else (a
   stream cut short has no manifest; a file added, lost or renamed is refused).
3. Copy into a staging directory beside the target, hashing what is written: every
   file's size and sha256 must be the manifest's, so what is checked is the copy itself.
4. Open the copy (read-only, so nothing changes it) and read its facts: the ring record
   and the summary of its logs must be the manifest's, so the database reads back as
   the one that was backed up.
5. Rename the staging directory to the target (atomic on one filesystem): a restore that
   fails at any step leaves no target behind, so it can simply be run again.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from chatd.storage.backup_format import (
    DB_DIR,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    BackupInvalid,
    Manifest,
)
from chatd.storage.errors import StorageError
from chatd.storage.snapshot import SnapshotFailed, read_facts

_CHUNK_BYTES = 1024 * 1024


class RestoreRefused(StorageError):
    """The target cannot take a restore (it holds data, or is not a directory)."""


@dataclass(frozen=True, slots=True)
class Restored:
    manifest: Manifest
    data_dir: Path
    db_files: int
    media_files: int
    total_bytes: int


def read_manifest(backup: Path) -> Manifest:
    """The backup's manifest, parsed and checked (`BackupInvalid` if absent or bad)."""
    path = backup / MANIFEST_NAME
    if not backup.is_dir():
        raise BackupInvalid(f"{backup} is not a directory")
    if not path.is_file():
        raise BackupInvalid(f"{backup} has no {MANIFEST_NAME}: it is not a backup, or one "
                            "that was cut short (the manifest comes last)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BackupInvalid(f"{path} is larger than any manifest chatd writes")
    return Manifest.from_json(path.read_bytes())


def check_complete(backup: Path, manifest: Manifest) -> None:
    """Every file the manifest lists is there with its size, and nothing else is."""
    present = {path.relative_to(backup).as_posix() for path in backup.rglob("*")
               if not path.is_dir()} - {MANIFEST_NAME}
    listed = {entry.path for entry in manifest.files}
    if missing := sorted(listed - present):
        raise BackupInvalid(f"{backup} is incomplete: {_some(missing)} listed in "
                            f"{MANIFEST_NAME} missing")
    if extra := sorted(present - listed):
        raise BackupInvalid(f"{backup} holds {_some(extra)} that {MANIFEST_NAME} does not "
                            "list: it was changed after it was taken")
    if f"{DB_DIR}/CURRENT" not in listed:
        raise BackupInvalid(f"{MANIFEST_NAME} lists no {DB_DIR}/CURRENT: there is no "
                            "database in this backup")
    for entry in manifest.files:
        path = backup / entry.path
        if path.is_symlink() or not path.is_file():
            raise BackupInvalid(f"{entry.path} is not a regular file")
        if path.stat().st_size != entry.size:
            raise BackupInvalid(f"{entry.path} is {path.stat().st_size} bytes; the manifest "
                                f"says {entry.size}: the backup was altered or damaged")


def check_target(data_dir: Path) -> None:
    if data_dir.is_symlink() or (data_dir.exists() and not data_dir.is_dir()):
        raise RestoreRefused(f"{data_dir} exists and is not a directory")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        raise RestoreRefused(f"{data_dir} is not empty: restore only into a new or empty "
                             "directory (move the old data aside first)")


def restore(backup: Path, data_dir: Path) -> Restored:
    """Restore `backup` into `data_dir`, checking everything (the module's steps).
    Raises `RestoreRefused` or `BackupInvalid`; on any failure `data_dir` is as it was."""
    check_target(data_dir)
    manifest = read_manifest(backup)
    check_complete(backup, manifest)
    staging = data_dir.parent / f".{data_dir.name}.restoring-{secrets.token_hex(4)}"
    try:
        staging.mkdir(mode=0o700, parents=True)  # like a data directory: owner-only
        total = 0
        for entry in manifest.files:
            # db/ files go to the top of the data directory; media/ files stay in media/.
            relative = entry.path.split("/", 1)[1] if entry.path.startswith(f"{DB_DIR}/") \
                else entry.path
            size, digest = _copy_hashing(backup / entry.path, staging / relative)
            if (size, digest) != (entry.size, entry.sha256):
                raise BackupInvalid(f"{entry.path} does not match the manifest (sha256 "
                                    f"{digest}, expected {entry.sha256}): the backup was "
                                    "altered or damaged")
            total += size
        _fsync_directory(staging)
        try:
            facts = read_facts(staging)
        except SnapshotFailed as exc:
            raise BackupInvalid(f"the restored database cannot be read: {exc}") from None
        expected = (manifest.shard, manifest.ring_signature, manifest.rocksdb_sequence,
                    manifest.summary)
        found = (facts.shard, facts.ring_signature, facts.rocksdb_sequence, facts.summary)
        if found != expected:
            raise BackupInvalid(f"the restored database is not the one the manifest "
                                f"describes (shard, ring, sequence, summary): {found} "
                                f"instead of {expected}")
        if data_dir.is_dir():
            data_dir.rmdir()  # empty (checked); rename() needs it gone
        staging.rename(data_dir)
        _fsync_directory(data_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    media_files = sum(1 for entry in manifest.files if not entry.path.startswith(f"{DB_DIR}/"))
    return Restored(manifest, data_dir, len(manifest.files) - media_files, media_files, total)


def _copy_hashing(source: Path, destination: Path) -> tuple[int, str]:
    """Copy a file, returning the size and sha256 of what was written; synced to disk,
    since a restored shard is about to be trusted as the only copy."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as reader, destination.open("xb") as writer:
        while chunk := reader.read(_CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return size, digest.hexdigest()


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")
