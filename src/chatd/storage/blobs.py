"""Blob storage: the bytes of media, by their sha256, apart from the database.

The database holds only metadata (`records.MEDIA`, `records.BLOBS`); the bytes live in a
`BlobStore`. Two backends: `LocalBlobStore` (files under `<data_dir>/media/ab/cd/<sha256>`,
the default) and `S3BlobStore` (`storage/s3.py`). The interface is small on purpose:

- `put(sha256, staged)`: take a staged file (hashed already) into the store; consumes it.
- `read(sha256, start, length)`: the bytes of a range, as chunks (an async iterator).
- `delete(sha256)`, `exists(sha256)`.
- `presigned_url(...)`: a URL the client may fetch directly, or None (local files).

Uploads are always staged first, in `Staging` (a temp directory inside the data dir): the
body is hashed and fsynced while it is written, and only then does it get a name, so a
half-written upload never sits at a content address.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import trio

#: Bytes read from a file per chunk when serving it.
READ_CHUNK = 1024 * 1024
#: Ranges up to this size are read on the event loop, in one call (see `read`).
INLINE_READ = 256 * 1024


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A complete upload in the staging directory, with its hash and size."""

    path: Path
    sha256: str
    size: int
    #: Its first bytes, for sniffing the content type.
    head: bytes


class BlobStore(Protocol):
    async def put(self, sha256: str, staged: Path, size: int) -> None:
        """Store the staged file's bytes under `sha256` (idempotent: the same hash is the
        same bytes). The staged file is consumed (moved or removed)."""

    def read(self, sha256: str, start: int, length: int) -> AsyncIterator[bytes]:
        """Bytes start .. start + length - 1, as chunks."""

    async def delete(self, sha256: str) -> None:
        """Remove the bytes; removing absent ones is not an error."""

    async def exists(self, sha256: str) -> bool: ...

    def presigned_url(self, sha256: str, ttl: float, *, content_type: str,
                      disposition: str) -> str | None:
        """A URL that serves the bytes directly for `ttl` seconds, if the backend can."""

    async def aclose(self) -> None: ...


@runtime_checkable
class SharedBlobStore(Protocol):
    """A store several shards share (one bucket): any shard reads another's blobs."""

    def read_of(self, shard: str, sha256: str, start: int, length: int
                ) -> AsyncIterator[bytes]: ...


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore:
    """Files at `root/ab/cd/<sha256>`: two levels of 256 directories keep any one of them
    small. The backup lists what to copy with `files()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path_of(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(ch in "0123456789abcdef" for ch in sha256):
            # Every hash here comes from hashlib or the database: a bad one is a bug,
            # and must never become a path.
            raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def files(self) -> Iterator[tuple[str, Path]]:
        """Every stored blob as (sha256, path): what a backup copies beside the database."""
        for first in sorted(self.root.iterdir()):
            if len(first.name) != 2 or not first.is_dir():
                continue  # the staging directory and anything else
            for second in sorted(first.iterdir()):
                for path in sorted(second.iterdir()):
                    if len(path.name) == 64:
                        yield path.name, path

    async def put(self, sha256: str, staged: Path, size: int) -> None:
        await trio.to_thread.run_sync(self._put, sha256, staged)

    def _put(self, sha256: str, staged: Path) -> None:
        target = self.path_of(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Replacing an existing copy is harmless (same hash, same bytes) and avoids a
        # race with a concurrent upload of the same content.
        os.replace(staged, target)
        _fsync_directory(target.parent)

    async def read(self, sha256: str, start: int, length: int) -> AsyncIterator[bytes]:
        path = self.path_of(sha256)
        if length <= INLINE_READ:
            # A small range (a ranged read, a thumbnail) is one pread from the page cache:
            # microseconds, less than the two thread hand-offs it would otherwise cost.
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.pread(fd, length, start)
            finally:
                os.close(fd)
            if len(data) != length:
                raise OSError(f"blob {sha256} ended early, at byte {start + len(data)}")
            yield data
            return
        file = await trio.to_thread.run_sync(open, path, "rb")
        try:
            position, remaining = start, length
            while remaining > 0:
                chunk = await trio.to_thread.run_sync(
                    os.pread, file.fileno(), min(READ_CHUNK, remaining), position)
                if not chunk:
                    raise OSError(f"blob {sha256} ended early, at byte {position}")
                position += len(chunk)
                remaining -= len(chunk)
                yield chunk
        finally:
            file.close()

    async def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_of(sha256))

    async def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).exists()

    def presigned_url(self, sha256: str, ttl: float, *, content_type: str,
                      disposition: str) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


#: How much of a body is gathered before it is hashed and written (in a worker thread:
#: hashlib and write release the GIL, so this overlaps with receiving the next part).
WRITE_CHUNK = 1024 * 1024
#: Bytes of the head kept for sniffing.
HEAD_BYTES = 8192


async def close_source(chunks: AsyncIterator[bytes]) -> None:
    """Close an async generator that was not read to its end (an error stopped the
    reader), so the generators it reads from close in turn, now rather than when the
    garbage collector finds them outside any Trio task."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


class Staging:
    """Temp files for uploads in progress, inside the data directory (so the final
    `os.replace` is a rename on the same filesystem). Leftovers of a crash are removed
    when the shard starts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()

    def new_path(self) -> Path:
        return self.directory / f"upload-{secrets.token_hex(12)}"

    async def write(self, chunks: AsyncIterator[bytes]) -> StagedFile:
        """Stream `chunks` to a new temp file, hashing as it goes, then fsync it. On any
        error (or cancellation) the temp file is removed."""
        path = self.new_path()
        digest = hashlib.sha256()
        file = await trio.to_thread.run_sync(open, path, "wb")
        size = 0
        head = bytearray()
        pending = bytearray()

        def flush(data: bytes) -> None:
            digest.update(data)
            file.write(data)

        try:
            async for chunk in chunks:
                size += len(chunk)
                if len(head) < HEAD_BYTES:
                    head += chunk[:HEAD_BYTES - len(head)]
                pending += chunk
                if len(pending) >= WRITE_CHUNK:
                    data, pending = bytes(pending), bytearray()
                    await trio.to_thread.run_sync(flush, data)
            if pending:
                await trio.to_thread.run_sync(flush, bytes(pending))

            def finish() -> None:
                file.flush()
                os.fsync(file.fileno())
                file.close()

            await trio.to_thread.run_sync(finish)
        except BaseException:
            file.close()
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        finally:
            await close_source(chunks)
        return StagedFile(path, digest.hexdigest(), size, bytes(head))

    def write_bytes(self, data: bytes) -> StagedFile:
        """A small staged file made here (a thumbnail), synchronously: call it from a
        worker thread."""
        path = self.new_path()
        with open(path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return StagedFile(path, hashlib.sha256(data).hexdigest(), len(data), data[:HEAD_BYTES])

    @staticmethod
    def discard(path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
