"""The local blob store and the staging area, on real files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatd.storage.blobs import LocalBlobStore, Staging


async def chunks_of(data: bytes, size: int = 300_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def read_all(store: LocalBlobStore, sha256: str, start: int, length: int) -> bytes:
    return b"".join([chunk async for chunk in store.read(sha256, start, length)])


async def test_stage_put_read_delete(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "media" / "staging")
    store = LocalBlobStore(tmp_path / "media")
    data = os.urandom(3_000_000)  # several write chunks
    staged = await staging.write(chunks_of(data))
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    assert staged.size == len(data) and staged.head == data[:8192]
    await store.put(staged.sha256, staged.path, staged.size)
    assert not staged.path.exists()
    path = store.path_of(staged.sha256)
    assert path == tmp_path / "media" / staged.sha256[:2] / staged.sha256[2:4] / staged.sha256
    assert path.read_bytes() == data and await store.exists(staged.sha256)
    assert await read_all(store, staged.sha256, 0, len(data)) == data
    assert await read_all(store, staged.sha256, 1_048_570, 20) == data[1_048_570:1_048_590]
    # The same bytes again: replacing is harmless.
    again = await staging.write(chunks_of(data))
    await store.put(again.sha256, again.path, again.size)
    assert [sha for sha, _ in store.files()] == [staged.sha256]  # the staging dir is not listed
    await store.delete(staged.sha256)
    assert not await store.exists(staged.sha256)
    await store.delete(staged.sha256)
    assert list(store.files()) == []


async def test_a_failed_upload_leaves_no_temp_file(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "staging")

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 2_000_000
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        await staging.write(broken())
    assert list(staging.directory.iterdir()) == []


def test_leftovers_of_a_crash_are_removed_at_start(tmp_path: Path) -> None:
    directory = tmp_path / "staging"
    directory.mkdir()
    (directory / "upload-dead").write_bytes(b"half")
    Staging(directory)
    assert list(directory.iterdir()) == []


def test_hashes_never_become_arbitrary_paths(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    for bad in ("../../etc/passwd", "AB" * 32, "ab" * 31, "zz" * 32):
        with pytest.raises(ValueError):
            store.path_of(bad)
