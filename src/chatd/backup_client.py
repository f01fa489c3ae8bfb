"""`chatd backup`'s side of a backup: ask a running shard for one, unpack it into a
directory, and check every file against the manifest before calling it a backup.

The server's answer is a tar (`storage/backup_format.py`). It is unpacked into a staging
directory beside the target and renamed into place only once the manifest, which comes
last, has been read and every file matches it; anything else (a dropped connection, a
server that stopped midway, a name that would climb out of the directory) removes the
staging directory and raises `BackupDownloadFailed`. Plain blocking httpx: a command
line tool that does one thing needs no event loop.

The admin token goes in the Authorization header only; no message here contains it.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from chatd.storage.backup_format import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    BackupInvalid,
    FileEntry,
    Manifest,
    check_member_name,
)

_CHUNK_BYTES = 1024 * 1024


class BackupDownloadFailed(Exception):
    """No backup was written; the message says why."""


@dataclass(frozen=True, slots=True)
class Downloaded:
    manifest: Manifest
    directory: Path
    total_bytes: int


def download_backup(url: str, admin_token: str, directory: Path, *,
                    timeout: float = 60.0) -> Downloaded:
    """Take a backup of the shard at `url` into `directory` (new or empty)."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BackupDownloadFailed(f"{directory} exists and is not an empty directory: "
                                   "give a new one for each backup")
    staging = directory.parent / f".{directory.name}.partial-{secrets.token_hex(4)}"
    endpoint = url.rstrip("/") + "/admin/backup"
    try:
        # Owner-only: a backup holds password and token hashes and every message.
        staging.mkdir(mode=0o700, parents=True)
        # The timeout bounds each wait for bytes, not the whole backup.
        with httpx.Client(timeout=timeout) as http, http.stream(
                "POST", endpoint, headers={"Authorization": f"Bearer {admin_token}"}) as answer:
            if answer.status_code != 200:
                answer.read()
                raise BackupDownloadFailed(f"{endpoint} answered {answer.status_code}: "
                                           f"{_error_text(answer)}")
            received, manifest = _unpack(answer.iter_bytes(_CHUNK_BYTES), staging)
        _check_against(manifest, received)
        (staging / MANIFEST_NAME).write_bytes(manifest.to_json())
        if directory.is_dir():
            directory.rmdir()  # empty (checked above)
        staging.rename(directory)
    except httpx.HTTPError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupDownloadFailed(f"the backup from {endpoint} failed: {exc}") from None
    except BackupInvalid as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupDownloadFailed(f"the backup from {endpoint} is not usable: {exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Downloaded(manifest, directory, sum(entry.size for entry in manifest.files))


def _unpack(chunks: Iterator[bytes], staging: Path) -> tuple[dict[str, FileEntry], Manifest]:
    """Write each member of the tar stream under `staging`; what was written, by name
    (with its sha256 as computed here), and the manifest."""
    received: dict[str, FileEntry] = {}
    manifest: Manifest | None = None
    try:
        with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|") as archive:
            for member in archive:
                if manifest is not None:
                    raise BackupInvalid(f"{member.name!r} follows the manifest, which "
                                        "comes last")
                if not member.isfile():
                    raise BackupInvalid(f"{member.name!r} is not a regular file")
                source = archive.extractfile(member)
                assert source is not None  # a regular file always has one
                if member.name == MANIFEST_NAME:
                    if member.size > MAX_MANIFEST_BYTES:
                        raise BackupInvalid("the manifest is larger than any chatd writes")
                    manifest = Manifest.from_json(source.read())
                    continue
                check_member_name(member.name)
                if member.name in received:
                    raise BackupInvalid(f"{member.name!r} comes twice")
                received[member.name] = _write(source, staging / member.name, member.name)
    except tarfile.TarError as exc:
        raise BackupInvalid(f"the answer is not a complete tar stream ({exc})") from None
    if manifest is None:
        raise BackupInvalid("the stream ended before the manifest: the server stopped "
                            "or the connection dropped before the backup was complete")
    return received, manifest


def _write(source: IO[bytes], path: Path, name: str) -> FileEntry:
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with path.open("xb") as writer:
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return FileEntry(name, size, digest.hexdigest())


def _check_against(manifest: Manifest, received: dict[str, FileEntry]) -> None:
    listed = {entry.path: entry for entry in manifest.files}
    if set(listed) != set(received):
        missing = sorted(set(listed) - set(received))
        extra = sorted(set(received) - set(listed))
        raise BackupInvalid(f"the files sent differ from the manifest (missing: {missing}, "
                            f"unlisted: {extra})")
    for name, entry in received.items():
        if entry != listed[name]:
            raise BackupInvalid(f"{name} arrived as {entry.size} bytes with sha256 "
                                f"{entry.sha256}; the manifest says {listed[name].size} "
                                f"and {listed[name].sha256}")


def _error_text(answer: httpx.Response) -> str:
    try:
        error = answer.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return answer.text[:200] or answer.reason_phrase


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (tarfile's stream mode reads one)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        # A view, so that handing out a chunk in small reads copies each byte once.
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
