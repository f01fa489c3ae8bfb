"""POST /admin/backup on a real shard: access, the tar it answers, one backup at a time,
and a client that leaves midway (its snapshot is removed; the shard serves on)."""

from __future__ import annotations

import functools
import io
import os
import tarfile
from pathlib import Path

import httpx
import trio

from chatd.server import RunningServer, serve
from chatd.storage.backup_format import Manifest
from tests.conftest import ServerFactory
from tests.helpers import assert_error, make_config, new_account

ADMIN = "backup-admin-token-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


async def start_with_admin(start_server: ServerFactory) -> RunningServer:
    return await start_server(server={"admin_token": ADMIN})


def workspace(running: RunningServer) -> Path:
    return Path(running.services.config.storage.data_dir) / "backup-tmp"


def add_media(running: RunningServer, size: int) -> None:
    """A media file large enough that the stream cannot fit in socket buffers."""
    media = Path(running.services.config.storage.data_dir) / "media"
    media.mkdir(exist_ok=True)
    (media / "big.bin").write_bytes(os.urandom(size))


async def snapshots_gone(running: RunningServer) -> None:
    with trio.fail_after(10):
        while workspace(running).exists() and any(workspace(running).iterdir()):  # noqa: ASYNC110
            await trio.sleep(0.02)


async def test_without_an_admin_token_there_is_no_backup_route(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    assert_error(await http.post("/admin/backup", headers=AS_ADMIN), 404, "not_found")
    assert "/admin/backup" not in (await http.get("/openapi.json")).json()["paths"]


async def test_only_the_admin_token_takes_a_backup(start_server: ServerFactory) -> None:
    running = await start_with_admin(start_server)
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        user = await new_account(http)
        assert_error(await http.post("/admin/backup"), 401, "invalid_token")
        assert_error(await user.post("/admin/backup"), 401, "invalid_token")
        assert_error(await http.post("/admin/backup",
                                     headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(await http.get("/admin/backup", headers=AS_ADMIN), 405)
        assert not workspace(running).exists() or not any(workspace(running).iterdir())


async def test_the_answer_is_a_tar_of_the_snapshot_and_its_manifest(
        start_server: ServerFactory) -> None:
    running = await start_with_admin(start_server)
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation_id = await alice.direct_with(bob)
        for n in range(3):
            assert (await alice.send(conversation_id, f"m{n}")).status_code == 201
        response = await http.post("/admin/backup", headers=AS_ADMIN)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-tar"
        assert 'filename="chatd-local-' in response.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:") as archive:
        members = archive.getmembers()
        manifest_file = archive.extractfile(members[-1])
        assert manifest_file is not None
        manifest = Manifest.from_json(manifest_file.read())
    assert members[-1].name == "manifest.json"
    assert [member.name for member in members[:-1]] == [entry.path for entry in manifest.files]
    assert manifest.shard == "local"
    assert manifest.summary.conversations == 1
    assert manifest.summary.log_entries == 3
    await snapshots_gone(running)


async def test_the_document_describes_the_route_as_an_admin_one(
        start_server: ServerFactory) -> None:
    running = await start_with_admin(start_server)
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        operation = (await http.get("/openapi.json")).json()["paths"]["/admin/backup"]["post"]
    assert operation["security"] == [{"admin": []}]
    assert set(operation["responses"]) == {"200", "401", "409", "503"}
    assert "application/x-tar" in operation["responses"]["200"]["content"]


async def test_one_backup_at_a_time_and_a_client_that_leaves_frees_the_next(
        start_server: ServerFactory) -> None:
    running = await start_with_admin(start_server)
    add_media(running, 16 * 1024 * 1024)
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    # A plain socket: the client reads the start of the answer, then hangs up.
    leaving = await trio.open_tcp_stream(host, int(port))
    await leaving.send_all(b"POST /admin/backup HTTP/1.1\r\nHost: chatd\r\n"
                           b"Authorization: Bearer " + ADMIN.encode() +
                           b"\r\nContent-Length: 0\r\n\r\n")
    start = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in start:
            start += await leaving.receive_some(65536)
    assert start.startswith(b"HTTP/1.1 200")
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        assert any(workspace(running).iterdir())  # 16 MB are still to be sent
        assert_error(await http.post("/admin/backup", headers=AS_ADMIN), 409,
                     "backup_running")
        await leaving.aclose()
        # The first client left midway: its snapshot goes, and the next backup may start.
        await snapshots_gone(running)
        assert (await http.get("/healthz")).status_code == 200
        again = await http.post("/admin/backup", headers=AS_ADMIN)
        assert again.status_code == 200
        assert again.content.endswith(bytes(1024))  # the tar's end, after the manifest
    await snapshots_gone(running)


async def test_a_start_removes_what_an_interrupted_backup_left(nursery: trio.Nursery,
                                                               tmp_path: Path) -> None:
    # A crash mid-backup leaves a snapshot whose links pin table files: the next start
    # (server.serve) deletes it.
    leftover = tmp_path / "data" / "backup-tmp" / "snapshot-dead" / "db"
    leftover.mkdir(parents=True)
    (leftover / "000009.sst").write_bytes(b"pinned")
    shutdown = trio.Event()
    await nursery.start(functools.partial(serve, make_config(tmp_path / "data"),
                                          shutdown=shutdown))
    assert not (tmp_path / "data" / "backup-tmp").exists()
    shutdown.set()
