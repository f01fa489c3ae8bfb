"""The media lifecycle on a real shard: reference counts, the GC of unreferenced uploads
and of blobs whose count reached 0 (on a clock the test moves), shared blobs."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio
import trio.testing

from chatd.errors import RateLimited
from chatd.storage import records
from chatd.storage.blobs import LocalBlobStore
from tests.conftest import ServerFactory
from tests.helpers import Account, ManualClock, assert_error, new_account
from tests.media_files import random_bytes

TTL_S = 3600.0


async def upload(account: Account, data: bytes) -> dict[str, str]:
    response = await account.http.post("/media/upload", content=data, headers={
        **account.headers, "Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


async def test_gc_of_unreferenced_uploads_and_of_zero_count_blobs(
        start_server: ServerFactory) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, media={"unreferenced_ttl": TTL_S})
    media = server.services.media
    blobs = media.blobs
    assert isinstance(blobs, LocalBlobStore)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        lonely = await upload(alice, random_bytes(1000))
        sent = await upload(alice, random_bytes(2000))
        deleted = await upload(alice, random_bytes(3000))
        conversation = await alice.direct_with(bob)
        response = await alice.post("/messages/send", {
            "conversation_id": conversation, "client_msg_id": "m1",
            "content_type": "text/plain", "body": "x",
            "attachments": [{"media_id": sent["media_id"]}]})
        assert response.status_code == 201
        assert (await alice.delete(deleted["url"])).status_code == 204
        assert (await alice.get("/media/usage")).json()["used_bytes"] == 3000

        # Now: the deleted upload's blob (count 0) goes; the young lonely upload stays.
        report = await media.collect_garbage()
        assert (report.uploads_deleted, report.blobs_deleted) == (0, 1)
        assert not blobs.path_of(deleted["sha256"]).exists()
        assert server.services.store.get(records.BLOBS, deleted["sha256"]) is None
        assert blobs.path_of(lonely["sha256"]).exists()

        # Just before the TTL nothing changes; past it the lonely upload and its blob go.
        clock.now += int(TTL_S * 1000) - 1000
        report = await media.collect_garbage()
        assert (report.uploads_deleted, report.blobs_deleted) == (0, 0)
        clock.now += 2000
        report = await media.collect_garbage()
        assert (report.uploads_deleted, report.blobs_deleted) == (1, 1)
        assert not blobs.path_of(lonely["sha256"]).exists()
        assert_error(await alice.http.get(lonely["url"], headers=alice.headers), 404)
        assert (await alice.get("/media/usage")).json()["used_bytes"] == 2000

        # The media a message carries lives on, for both.
        for account in (alice, bob):
            response = await account.http.get(sent["url"], headers=account.headers)
            assert response.status_code == 200 and len(response.content) == 2000
        assert server.services.store.get(records.BLOBS, sent["sha256"]).refs == 1
        report = await media.collect_garbage()
        assert (report.uploads_deleted, report.blobs_deleted) == (0, 0)


async def test_a_shared_blob_lives_while_any_upload_uses_it(
        start_server: ServerFactory) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, media={"unreferenced_ttl": TTL_S})
    media = server.services.media
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        data = random_bytes(5000)
        first = await upload(alice, data)
        clock.now += int(TTL_S * 1000) // 2
        second = await upload(bob, data)
        assert (await alice.delete(first["url"])).status_code == 204
        assert (await media.collect_garbage()).blobs_deleted == 0
        response = await bob.http.get(second["url"], headers=bob.headers)
        assert response.status_code == 200 and response.content == data
        # Bob's upload expires later than Alice's would have: then the blob goes.
        clock.now += int(TTL_S * 1000) // 2 + 1000
        assert (await media.collect_garbage()).uploads_deleted == 0
        clock.now += int(TTL_S * 1000) // 2
        report = await media.collect_garbage()
        assert (report.uploads_deleted, report.blobs_deleted) == (1, 1)
        assert not media.blobs.path_of(first["sha256"]).exists()  # type: ignore[attr-defined]


async def test_files_of_a_refused_upload_are_collected(start_server: ServerFactory) -> None:
    """A chunked multipart upload declares no length, so the quota can only refuse it at
    the commit, after its file was put in place: the GC then deletes that file."""
    server = await start_server(media={"quota_bytes": 10_000})
    media = server.services.media
    blobs = media.blobs
    assert isinstance(blobs, LocalBlobStore)
    data = random_bytes(12_000)
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--xyz--\r\n")

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start:start + 4096]

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        response = await http.post("/media/upload", content=chunked(), headers={
            **alice.headers, "Content-Type": "multipart/form-data; boundary=xyz"})
        assert_error(response, 507, "quota_exceeded")
    sha256 = hashlib.sha256(data).hexdigest()
    assert blobs.path_of(sha256).exists()  # put in place before the commit refused it
    report = await media.collect_garbage()
    assert report.blobs_deleted == 1 and not blobs.path_of(sha256).exists()


async def test_a_user_has_at_most_max_concurrent_uploads_in_progress(
        start_server: ServerFactory) -> None:
    """Each upload in progress stages bytes on the data disk before the quota can see its
    size: one user's uploads at once are capped, and a slot comes back when one ends."""
    server = await start_server(media={"max_concurrent_uploads": 2})
    media = server.services.media
    release = trio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await release.wait()

    def describe() -> tuple[str, str | None]:
        return "application/octet-stream", None

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(partial(media.upload, int(alice.user_id), chunks=slow_body(),
                                       describe=describe))
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5), pytest.raises(RateLimited) as refused:
            await media.upload(int(alice.user_id), chunks=slow_body(), describe=describe)
        assert refused.value.retry_after > 0
        # Another user is not affected.
        done = trio.Event()

        async def bobs() -> None:
            async def body() -> AsyncIterator[bytes]:
                yield b"y" * 10
            await media.upload(int(bob.user_id), chunks=body(), describe=describe)
            done.set()

        nursery.start_soon(bobs)
        with trio.fail_after(10):
            await done.wait()
        release.set()
    # Both finished: alice may upload again.
    async def body() -> AsyncIterator[bytes]:
        yield b"z" * 10
    record = await media.upload(int(alice.user_id), chunks=body(), describe=describe)
    assert record.size == 10
