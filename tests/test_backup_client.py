"""`download_backup` against a real shard, and against servers that answer badly: a
stream cut short, or one whose names would climb out of the backup directory."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from chatd.backup_client import BackupDownloadFailed, Downloaded, download_backup
from chatd.storage.backup_format import TAR_END, tar_header, tar_padding
from chatd.storage.restore import check_complete, read_manifest
from tests.conftest import ServerFactory
from tests.helpers import free_port

ADMIN = "backup-admin-token-0123456789"


async def download(url: str, token: str, directory: Path) -> Downloaded:
    # Blocking httpx, as in the CLI: in a thread, so the shard in this Trio run can answer.
    return await trio.to_thread.run_sync(
        functools.partial(download_backup, url, token, directory, timeout=10))


def leftovers(parent: Path) -> list[str]:
    return [path.name for path in parent.iterdir() if ".partial-" in path.name]


async def test_a_backup_is_unpacked_and_checked(start_server: ServerFactory,
                                                tmp_path: Path) -> None:
    running = await start_server(server={"admin_token": ADMIN})
    done = await download(running.url, ADMIN, tmp_path / "backup")
    manifest = read_manifest(tmp_path / "backup")
    assert manifest == done.manifest
    check_complete(tmp_path / "backup", manifest)
    assert done.total_bytes == sum(entry.size for entry in manifest.files) > 0
    assert leftovers(tmp_path) == []
    assert (tmp_path / "backup").stat().st_mode & 0o777 == 0o700  # hashes, messages


async def test_a_wrong_token_writes_nothing_and_is_not_repeated(
        start_server: ServerFactory, tmp_path: Path) -> None:
    running = await start_server(server={"admin_token": ADMIN})
    with pytest.raises(BackupDownloadFailed, match="answered 401: invalid_token") as raised:
        await download(running.url, "not-the-token-xyz", tmp_path / "backup")
    assert "not-the-token-xyz" not in str(raised.value)
    assert not (tmp_path / "backup").exists()
    assert leftovers(tmp_path) == []


async def test_a_directory_holding_anything_is_refused(start_server: ServerFactory,
                                                       tmp_path: Path) -> None:
    running = await start_server(server={"admin_token": ADMIN})
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "old").write_text("x")
    with pytest.raises(BackupDownloadFailed, match="not an empty directory"):
        await download(running.url, ADMIN, tmp_path / "backup")


async def test_no_server_is_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(BackupDownloadFailed, match="failed"):
        await download(f"http://127.0.0.1:{free_port()}", ADMIN, tmp_path / "backup")
    assert leftovers(tmp_path) == []


def escaped(root: Path) -> list[Path]:
    return list(root.rglob("escaped"))


def member(name: str, data: bytes) -> bytes:
    return tar_header(name, len(data), 0) + data + tar_padding(len(data))


@pytest.fixture
async def answering(nursery: trio.Nursery) -> AsyncIterator[Callable[[bytes], Awaitable[str]]]:
    """Start a bare HTTP server that answers 200 with the given body, then hangs up."""

    async def start(body: bytes) -> str:
        async def handle(stream: trio.SocketStream) -> None:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\n"
                                  b"Connection: close\r\n\r\n" + body)
            await stream.aclose()

        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"

    yield start


@pytest.mark.parametrize(("body", "complaint"), [
    # Cut at a member boundary: no manifest ever came.
    (member("db/CURRENT", b"MANIFEST-000005\n"), "ended before the manifest"),
    # Cut inside a member.
    (member("db/CURRENT", b"MANIFEST-000005\n")[:600], "not a complete tar stream"),
    # Names that climb out of the backup directory, or are no backup's.
    (member("db/../../escaped", b"x") + TAR_END, "not a backup member name"),
    (member("../escaped", b"x") + TAR_END, "not a backup member name"),
    (member("/tmp/escaped", b"x") + TAR_END, "not a backup member name"),
    # A file that does not match the manifest that follows.
    (member("db/CURRENT", b"MANIFEST-000005\n") + member("manifest.json", b"{}") + TAR_END,
     "manifest.json"),
    (b"<html>not a tar</html>", "not a complete tar stream|ended before the manifest"),
])
async def test_a_bad_answer_is_refused_and_leaves_nothing(
        answering: Callable[[bytes], Awaitable[str]], tmp_path: Path, body: bytes,
        complaint: str) -> None:
    url = await answering(body)
    target = tmp_path / "inside" / "backup"
    target.parent.mkdir()
    with pytest.raises(BackupDownloadFailed, match=complaint):
        await download(url, ADMIN, target)
    assert not target.exists()
    assert escaped(tmp_path) == []
    assert leftovers(target.parent) == []
