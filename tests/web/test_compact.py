"""Deleted bytes leave the disk: a unique marker in a message (and an attached file) is
found in the shard's files before, and in none of them after the deletion or expiry and
`POST /admin/compact`. Every file under the data directory is read: RocksDB's tables,
write-ahead log, manifest and logs, and the media files."""

from __future__ import annotations

from pathlib import Path

import httpx

from chatd.server import RunningServer
from tests.conftest import ServerFactory
from tests.helpers import ManualClock, assert_error, disk_marker, new_account

ADMIN = "compact-admin-token-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def files_holding(server: RunningServer, marker: str) -> list[str]:
    """Every file under the shard's data directory whose bytes contain `marker`."""
    root = Path(server.services.config.storage.data_dir)
    needle = marker.encode()
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")
                  if path.is_file() and needle in path.read_bytes())


async def compact(http: httpx.AsyncClient) -> None:
    response = await http.post("/admin/compact", headers=AS_ADMIN)
    assert response.status_code == 204, response.text


async def test_delete_for_everyone_leaves_no_byte_behind(start_server: ServerFactory) -> None:
    server = await start_server(server={"admin_token": ADMIN})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        marker = disk_marker()
        uploaded = await http.post("/media/upload", content=f"file {marker}".encode(),
                                   headers={**alice.headers, "Content-Type": "text/plain"})
        assert uploaded.status_code == 201
        sent = await alice.post("/messages/send", {
            "conversation_id": conversation, "client_msg_id": "m1",
            "content_type": "text/plain", "body": f"body {marker}",
            "attachments": [{"media_id": uploaded.json()["media_id"]}]})
        seq = sent.json()["seq"]
        await alice.send(conversation, "an innocent neighbour")
        # The scan can fail: the marker is in the write-ahead log and the media file,
        # and, flushed, in a table file.
        holding = files_holding(server, marker)
        assert any(name.endswith(".log") for name in holding), holding
        assert any(name.startswith("media/") for name in holding), holding
        await compact(http)
        assert any(name.endswith(".sst") for name in files_holding(server, marker))

        response = await alice.post(f"/messages/{conversation}/{seq}/delete",
                                    {"for": "everyone"})
        assert response.status_code == 204
        await compact(http)
        assert files_holding(server, marker) == []
        assert files_holding(server, "an innocent neighbour")  # the rest is still there


async def test_expired_messages_leave_no_byte_behind(start_server: ServerFactory) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, server={"admin_token": ADMIN})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        response = await alice.patch(f"/conversations/{conversation}",
                                     {"disappearing_s": 86_400})
        assert response.status_code == 200
        marker = disk_marker()
        await bob.send(conversation, f"gone tomorrow {marker}")
        await compact(http)
        assert any(name.endswith(".sst") for name in files_holding(server, marker))
        clock.now += 86_400_000
        await compact(http)  # sweeps first: the expired message becomes a tombstone
        assert files_holding(server, marker) == []


async def test_only_the_admin_compacts(start_server: ServerFactory) -> None:
    server = await start_server(server={"admin_token": ADMIN})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        user = await new_account(http)
        assert_error(await http.post("/admin/compact", headers=user.headers), 401)
        assert_error(await http.post("/admin/compact"), 401)
    plain = await start_server()
    async with httpx.AsyncClient(base_url=plain.url, timeout=30) as http:
        assert_error(await http.post("/admin/compact", headers=AS_ADMIN), 404)
