"""What a backup is on the wire and on disk: a tar stream, its member names, its manifest.

`POST /admin/backup` answers a tar (so `curl … | tar -x` works without chatd); `chatd
backup` unpacks it into a directory of the same shape, which `chatd restore` reads:

    db/<file>          the RocksDB checkpoint, flat (000009.sst, MANIFEST-000005, …)
    media/<path>       the media files the snapshot references (`storage/snapshot.py`)
    manifest.json      last in the stream: it is written once every file above has been
                       sent, and carries their sizes and sha256, so a stream cut short has
                       no manifest and cannot pass for a backup

Pure: no I/O beyond encoding, so the server, the CLI and restore share one definition.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from chatd.storage.errors import StorageError

FORMAT = "chatd-backup/1"
MANIFEST_NAME = "manifest.json"
DB_DIR = "db"
MEDIA_DIR = "media"
#: A manifest larger than this is not one chatd wrote (each file is ~150 bytes in it).
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

_BLOCK = 512
#: Two zero blocks end a tar archive.
TAR_END = bytes(2 * _BLOCK)
#: RocksDB's own file names: 000009.sst, CURRENT, MANIFEST-000005, OPTIONS-000007, …
_DB_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BackupInvalid(StorageError):
    """A backup that is incomplete, altered, or not a chatd backup; the message says
    which file or field, and what was expected."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    #: The member name: db/… or media/…
    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Summary:
    """What the snapshot holds, computed from the database itself, so restore can check
    that the database it copied reads back as the one that was backed up."""

    #: Conversations with at least one log entry in this database (owned here, or held
    #: as a replica).
    conversations: int
    #: Log entries (messages and system entries) across them: the sum of their head seqs,
    #: since seqs are dense from 1.
    log_entries: int
    #: sha256 over every (conversation_id, head seq), 8 bytes big-endian each, in order.
    heads_sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    chatd_version: str
    created_at_ms: int
    #: The shard the data belongs to, and the ring it was placed by (`storage/meta.py`):
    #: a restored shard must come back under both.
    shard: str
    ring_signature: str
    shards: tuple[str, ...]
    #: RocksDB's sequence number of the last write in the snapshot.
    rocksdb_sequence: int
    summary: Summary
    files: tuple[FileEntry, ...]

    def to_json(self) -> bytes:
        created_at = datetime.fromtimestamp(self.created_at_ms / 1000, UTC)
        document = {
            "format": FORMAT,
            "chatd_version": self.chatd_version,
            "created_at": created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "created_at_ms": self.created_at_ms,
            "shard": self.shard,
            "ring": {"signature": self.ring_signature, "shards": list(self.shards)},
            "rocksdb_sequence": self.rocksdb_sequence,
            "summary": {"conversations": self.summary.conversations,
                        "log_entries": self.summary.log_entries,
                        "heads_sha256": self.summary.heads_sha256},
            "files": [{"path": entry.path, "size": entry.size, "sha256": entry.sha256}
                      for entry in self.files],
        }
        return json.dumps(document, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and check a manifest; raises `BackupInvalid` naming the bad field."""
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BackupInvalid(f"{MANIFEST_NAME} is not JSON ({exc})") from None
        root = _Fields(document, MANIFEST_NAME)
        if root.get("format", str) != FORMAT:
            raise BackupInvalid(f"{MANIFEST_NAME}: format {document.get('format')!r} is not "
                                f"{FORMAT!r}; this chatd cannot read that backup")
        ring = _Fields(root.get("ring", dict), "ring")
        summary = _Fields(root.get("summary", dict), "summary")
        shards = ring.get("shards", list)
        if not all(isinstance(name, str) for name in shards):
            raise BackupInvalid(f"{MANIFEST_NAME}: ring.shards must be a list of names")
        files = []
        seen = set()
        for index, raw in enumerate(root.get("files", list)):
            entry = _Fields(raw, f"files[{index}]")
            path = entry.get("path", str)
            check_member_name(path)
            if path in seen:
                raise BackupInvalid(f"{MANIFEST_NAME}: {path} is listed twice")
            seen.add(path)
            digest = entry.get("sha256", str)
            if not _SHA256.fullmatch(digest):
                raise BackupInvalid(f"{MANIFEST_NAME}: files[{index}].sha256 is not a "
                                    "sha256 in lower-case hex")
            files.append(FileEntry(path, entry.get_count("size"), digest))
        heads = summary.get("heads_sha256", str)
        if not _SHA256.fullmatch(heads):
            raise BackupInvalid(f"{MANIFEST_NAME}: summary.heads_sha256 is not a sha256")
        return cls(
            chatd_version=root.get("chatd_version", str),
            created_at_ms=root.get_count("created_at_ms"),
            shard=root.get("shard", str),
            ring_signature=ring.get("signature", str),
            shards=tuple(shards),
            rocksdb_sequence=root.get_count("rocksdb_sequence"),
            summary=Summary(summary.get_count("conversations"),
                            summary.get_count("log_entries"), heads),
            files=tuple(files))


class _Fields:
    """Typed access to one JSON object of the manifest, failing with the field's name."""

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise BackupInvalid(f"{MANIFEST_NAME}: {where} must be an object")
        self._value = value
        self._where = where

    def get(self, name: str, kind: type[Any]) -> Any:
        value = self._value.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BackupInvalid(f"{MANIFEST_NAME}: {self._where}.{name} is missing or not "
                                f"a {kind.__name__}")
        return value

    def get_count(self, name: str) -> int:
        value: int = self.get(name, int)
        if value < 0:
            raise BackupInvalid(f"{MANIFEST_NAME}: {self._where}.{name} is negative")
        return value


def check_member_name(name: str) -> PurePosixPath:
    """The relative path a backup member may have: db/<RocksDB file name> or
    media/<relative path>, nothing that climbs out (`..`), absolute or empty parts.
    Raises `BackupInvalid`: a name that breaks this did not come from chatd."""
    path = PurePosixPath(name)
    parts = path.parts
    if (len(parts) < 2 or "\\" in name or "\0" in name or name != str(path)
            or any(part in ("", ".", "..") for part in parts)):
        raise BackupInvalid(f"{name!r} is not a backup member name (db/<file> or "
                            "media/<path>, relative, without '..')")
    if parts[0] == DB_DIR and len(parts) == 2 and _DB_FILE.fullmatch(parts[1]):
        return path
    if parts[0] == MEDIA_DIR:
        return path
    raise BackupInvalid(f"{name!r} is not a backup member name: only db/<file> (flat) and "
                        "media/<path> are")


def tar_header(name: str, size: int, mtime_s: int) -> bytes:
    """The tar header of a regular file (PAX, so long media names and large sizes fit)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = mtime_s
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def tar_padding(size: int) -> bytes:
    """What follows a member's data to fill its last 512-byte block."""
    return bytes(-size % _BLOCK)
