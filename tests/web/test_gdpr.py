"""POST /me/export, GET /me/export/{id} and DELETE /me on a real shard: the zip and each
of its files, 202 then 200, another user's export, one at a time, the lifetime; erase
with a wrong password, and what erase leaves (login refused, the handle free, tokens and
sockets dead, uploads gone)."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from chatd.config import Config
from chatd.domain.ids import direct_conversation_id
from chatd.server import RunningServer, serve
from chatd.storage import records
from tests.conftest import ServerFactory
from tests.helpers import (
    PASSWORD,
    Account,
    ManualClock,
    assert_error,
    login,
    make_config,
    new_account,
)
from tests.media_files import png
from tests.web.test_media import uploaded


async def ready_export(account: Account, export_id: str, *, admin: dict[str, str] | None = None
                       ) -> httpx.Response:
    """Poll until the export is ready; returns the 200 answer."""
    path = f"/admin/exports/{export_id}" if admin else f"/me/export/{export_id}"
    with trio.fail_after(20):
        while True:
            response = await (account.http.get(path, headers=admin) if admin
                              else account.get(path))
            if response.status_code != 202:
                return response
            assert response.json() == {"export_id": export_id, "status": "pending"}
            await trio.sleep(0.05)


async def exported(account: Account) -> zipfile.ZipFile:
    started = await account.post("/me/export")
    assert started.status_code == 202, started.text
    export_id = started.json()["export_id"]
    response = await ready_export(account, export_id)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert "attachment" in response.headers["content-disposition"]
    return zipfile.ZipFile(io.BytesIO(response.content))


def document(archive: zipfile.ZipFile, name: str) -> Any:
    return json.loads(archive.read(name))


async def test_the_export_holds_each_file(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    await alice.patch("/me", json={"status": "busy exporting", "read_receipts": False})
    direct = await alice.direct_with(bob)
    group = await alice.group("the group", bob)
    await alice.send(direct, "hello bob")
    await bob.send(direct, "bob's own words")
    await alice.send(group, "hello group")
    image = png()
    media = await uploaded(alice, image, "image/png", "picture.png")
    archive = await exported(alice)
    names = set(archive.namelist())
    assert {"export.json", "profile.json", "settings.json", "devices.json",
            "conversations.json", "messages.json", "media.json"} <= names
    profile = document(archive, "profile.json")
    assert profile["handle"] == alice.handle and profile["status"] == "busy exporting"
    assert profile["user_id"] == alice.user_id
    assert document(archive, "settings.json")["read_receipts"] is False
    devices = document(archive, "devices.json")
    assert [device["device_id"] for device in devices] == [alice.device_id]
    assert set(devices[0]) == {"device_id", "name", "created_at"}  # no token hash
    conversations = {conv["conversation_id"]: conv
                     for conv in document(archive, "conversations.json")}
    assert set(conversations) == {direct, group}
    assert conversations[group]["your_membership"]["role"] == "admin"
    assert {member["user_id"] for member in conversations[group]["members"]} == {
        alice.user_id, bob.user_id}
    bodies = [message["body"] for message in document(archive, "messages.json")]
    assert sorted(bodies) == ["hello bob", "hello group"]  # only her own
    listed = document(archive, "media.json")
    assert [item["media_id"] for item in listed] == [media["media_id"]]
    assert archive.read(listed[0]["file"]) == image
    about = document(archive, "export.json")
    assert about["messages_truncated"] is False and about["user_id"] == alice.user_id
    # Bob's export holds his message, not hers, and no media.
    bob_archive = await exported(bob)
    assert [m["body"] for m in document(bob_archive, "messages.json")] == ["bob's own words"]
    assert document(bob_archive, "media.json") == []


async def test_exports_are_their_owners_only(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    first = await alice.post("/me/export")
    assert first.status_code == 202
    export_id = first.json()["export_id"]
    assert (await ready_export(alice, export_id)).status_code == 200
    assert_error(await bob.get(f"/me/export/{export_id}"), 404, "unknown_export")
    assert_error(await alice.get("/me/export/" + "0" * 35), 404, "unknown_export")
    assert_error(await alice.get("/me/export/not-an-id"), 400)
    assert_error(await http.get(f"/me/export/{export_id}"), 401)
    # Nothing of the export is left in the scratch space.
    exports = server.services.gdpr.exports.directory
    assert sorted(path.name for path in exports.iterdir()) == [f"{export_id}.zip"]


async def test_one_export_at_a_time_per_user(server: RunningServer,
                                             http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    store = server.services.gdpr.exports
    record = await store.begin(int(alice.user_id))  # an export being made
    try:
        assert_error(await alice.post("/me/export"), 409, "export_running")
    finally:
        await store.delete([record.export_id])
        store._making.discard(int(alice.user_id))  # the test played its maker
    started = await alice.post("/me/export")
    assert started.status_code == 202
    assert (await ready_export(alice, started.json()["export_id"])).status_code == 200


async def test_an_export_is_deleted_after_its_lifetime(start_server: ServerFactory) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, gdpr={"export_ttl": 60.0})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        export_id = (await alice.post("/me/export")).json()["export_id"]
        assert (await ready_export(alice, export_id)).status_code == 200
        path = server.services.gdpr.exports.path(export_id)
        assert path.exists()
        clock.now += 61_000
        assert_error(await alice.get(f"/me/export/{export_id}"), 404, "unknown_export")
        await server.services.gdpr.sweep()
        assert not path.exists()
        assert server.services.gdpr.exports.find(export_id) is None


async def test_erase_needs_the_password_and_erase_true(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    response = await alice.http.request("DELETE", "/me", headers=alice.headers,
                                        json={"password": "wrong password!", "erase": True})
    assert_error(response, 403, "wrong_password")
    response = await alice.http.request("DELETE", "/me", headers=alice.headers,
                                        json={"password": PASSWORD, "erase": False})
    assert_error(response, 400, "invalid_field")
    response = await alice.http.request("DELETE", "/me", headers=alice.headers,
                                        json={"password": PASSWORD})
    assert_error(response, 400, "missing_field")
    assert (await alice.get("/me")).status_code == 200  # nothing happened


async def erase(account: Account) -> httpx.Response:
    return await account.http.request("DELETE", "/me", headers=account.headers,
                                      json={"password": PASSWORD, "erase": True})


async def test_after_erase_the_account_is_gone_and_its_handle_free(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    second = await login(http, alice.handle, "second device")
    media = await uploaded(alice, png(), "image/png", "mine.png")
    export_id = (await alice.post("/me/export")).json()["export_id"]
    assert (await ready_export(alice, export_id)).status_code == 200
    direct = await bob.direct_with(alice)
    await alice.send(direct, "something to erase")
    response = await erase(alice)
    assert response.status_code == 200 and response.json() == {"status": "erased"}
    history = (await bob.get(f"/messages/{direct}")).json()["messages"]
    assert next(m["content_type"] for m in history if m["sender_id"] == alice.user_id) == \
        "chatd/deleted"
    assert history[-1]["body"]["event"] == "member_erased"
    # Every token is dead; logging in is refused as for a wrong password.
    for account in (alice, second):
        assert_error(await account.get("/me"), 401, "invalid_token")
    assert_error(await http.post("/login", json={"handle": alice.handle, "password": PASSWORD}),
                 401, "bad_credentials")
    # The profile is a tombstone; the handle is free for someone else.
    shown = (await bob.get(f"/users/{alice.user_id}")).json()
    assert shown["display_name"] == "deleted account" and shown["handle"] == ""
    assert_error(await bob.get("/users", params={"handle": alice.handle}), 404)
    newcomer = await new_account(http, alice.handle)
    assert newcomer.user_id != alice.user_id
    # The upload and the export are gone, files included.
    assert_error(await bob.get(f"/media/{media['media_id']}"), 404)
    assert server.services.media.find(int(media["media_id"])) is None
    assert not server.services.gdpr.exports.path(export_id).exists()
    blob = server.services.media.blobs
    assert not [sha for sha, _ in blob.files()]  # type: ignore[attr-defined]


async def test_a_shutdown_does_not_wait_for_an_export_being_written(
        nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An export being written when the shard stops: the writer gives up at its next
    chunk instead of finishing the zip (before, the stop waited for the whole write), and
    after a restart nothing of it is left: no file, no record, 404."""
    caplog.set_level(logging.INFO, logger="chatd.services.gdpr")
    config = make_config(tmp_path / "data")
    shutdown = trio.Event()
    stopped = trio.Event()

    async def run_until_stopped(task_status: trio.TaskStatus[RunningServer]) -> None:
        await serve(config, shutdown=shutdown, task_status=task_status)
        stopped.set()

    running: RunningServer = await nursery.start(run_until_stopped)
    exports = running.services.gdpr.exports.directory
    async with httpx.AsyncClient(base_url=running.url, timeout=60) as http:
        alice = await new_account(http)
        # Random bytes do not compress: deflating 48 MiB keeps the writer busy for
        # seconds, far longer than a stop may take.
        await uploaded(alice, os.urandom(48 << 20), "application/octet-stream", "big.bin")
        export_id = (await alice.post("/me/export")).json()["export_id"]
        partial = exports / f"{export_id}.zip.tmp"
        with trio.fail_after(30):
            while not partial.exists():  # noqa: ASYNC110  # a file, not an event
                await trio.sleep(0.01)
    began = trio.current_time()
    shutdown.set()
    with trio.fail_after(10):
        await stopped.wait()
    took = trio.current_time() - began
    assert took < 5.0, f"the shard took {took:.1f} s to stop"
    assert f"export {export_id} stopped: the shard is stopping" in caplog.text
    again: RunningServer = await nursery.start(partial_serve(config, trio.Event()))
    async with httpx.AsyncClient(base_url=again.url, timeout=30) as http:
        alice = await login(http, alice.handle)
        assert_error(await alice.get(f"/me/export/{export_id}"), 404, "unknown_export")
        assert again.services.gdpr.exports.find(export_id) is None
        assert not [path.name for path in exports.iterdir()
                    if path.name.startswith(export_id)]
        # And the user can export again at once.
        started = await alice.post("/me/export")
        assert started.status_code == 202, started.text


def partial_serve(config: Config, shutdown: trio.Event) -> Any:
    return functools.partial(serve, config, shutdown=shutdown)


async def test_the_export_holds_blocks_reports_and_privacy_settings(
        http: httpx.AsyncClient) -> None:
    alice, bob, carol = [await new_account(http) for _ in range(3)]
    group = await bob.group("reported here", alice)
    changed = await alice.patch("/me/privacy", {"last_seen": "contacts", "profile": "nobody",
                                                "groups_add": "contacts"})
    assert changed.status_code == 200, changed.text
    assert (await alice.post(f"/blocks/{carol.user_id}")).status_code == 204
    seq = (await bob.send(group, "buy cheap pills")).json()["seq"]
    filed = await alice.post("/reports", {"conversation_id": group, "seq": seq,
                                          "reason": "other", "note": "alice's note",
                                          "evidence": "alice's evidence"})
    assert filed.status_code == 201, filed.text
    # A report against alice is not hers to see: bob's words about her stay out.
    alice_seq = (await alice.send(group, "hello")).json()["seq"]
    against = await bob.post("/reports", {"conversation_id": group, "seq": alice_seq,
                                          "reason": "spam", "evidence": "bob's evidence"})
    assert against.status_code == 201, against.text

    archive = await exported(alice)
    privacy = document(archive, "settings.json")["privacy"]
    assert privacy == {"last_seen": "contacts", "profile": "nobody",
                       "groups_add": "contacts", "read_receipts": True}
    blocks = document(archive, "blocks.json")
    assert [block["user_id"] for block in blocks] == [carol.user_id]
    assert isinstance(blocks[0]["blocked_at"], int) and blocks[0]["blocked_at"] > 0
    reports = document(archive, "reports.json")
    assert [(r["report_id"], r["reported_user_id"], r["seq"], r["reason"], r["note"],
             r["evidence"], r["status"]) for r in reports] == [
        (filed.json()["report_id"], bob.user_id, seq, "other", "alice's note",
         "alice's evidence", "open")]
    assert b"bob's evidence" not in b"".join(archive.read(name)
                                             for name in archive.namelist())
    assert document(archive, "export.json")["reports_truncated"] is False
    # Carol blocks nobody and filed nothing.
    carol_archive = await exported(carol)
    assert document(carol_archive, "blocks.json") == []
    assert document(carol_archive, "reports.json") == []


async def test_erase_drops_blocks_invites_reports_and_abuse_records(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    alice, bob, carol, dave = [await new_account(http) for _ in range(4)]
    me = int(alice.user_id)
    store = server.services.store
    # Alice blocks carol (a row at her home, a flag on their direct chat's owner).
    assert (await alice.post(f"/blocks/{carol.user_id}")).status_code == 204
    group = await bob.group("the group", alice)
    # An invite to alice, pending: she only takes adds from contacts.
    await alice.patch("/me/privacy", {"groups_add": "contacts"})
    invited = await dave.group("dave's group", alice)
    assert [i["conversation_id"] for i in (await alice.get("/invites")).json()["invites"]] \
        == [invited]
    # A report alice filed (its note and evidence are her words) and one against her.
    bob_seq = (await bob.send(group, "spam spam")).json()["seq"]
    filed = await alice.post("/reports", {"conversation_id": group, "seq": bob_seq,
                                          "reason": "other", "note": "her note",
                                          "evidence": "her evidence"})
    assert filed.status_code == 201, filed.text
    alice_seq = (await alice.send(group, "her words")).json()["seq"]
    against = await bob.post("/reports", {"conversation_id": group, "seq": alice_seq,
                                          "reason": "spam"})
    assert against.status_code == 201, against.text
    assert store.get(records.ABUSE, me) is not None  # the report against her counted
    blocks_before = store.scan(records.BLOCKS, records.u64(me))
    assert blocks_before

    assert (await erase(alice)).json() == {"status": "erased"}

    # Her block list and its flag are gone: carol may write to the erased account's
    # direct chat as to any other (nobody reads it), and no row names her as blocker.
    assert store.scan(records.BLOCKS, records.u64(me)) == []
    state = store.get(records.DIRECT_STATES,
                      direct_conversation_id(me, int(carol.user_id)))
    assert state is None or me not in state.blocked_by
    # The invite was declined: nothing of it left on the group's owner.
    assert store.get(records.INVITES, (int(invited), me)) is None
    assert store.scan(records.USER_INVITES, records.u64(me)) == []
    # The report she filed stays for the moderators, without her words.
    kept = [report for _, report in store.scan(records.REPORTS, b"")
            if report.reporter_id == me]
    assert [(r.report_id, r.note, r.evidence, r.message_text) for r in kept] == [
        (int(filed.json()["report_id"]), "", "", "spam spam")]
    # Reports against her (their copies of her text), her counters and queue row: gone.
    assert [r for _, r in store.scan(records.REPORTS, b"") if r.reported_id == me] == []
    assert store.scan(records.REPORT_DEDUP, records.u64(me)) == []
    assert store.get(records.ABUSE, me) is None
    assert store.get(records.ABUSE_QUEUE, me) is None
    assert store.get(records.LAST_SEEN, me) is None
    assert store.scan(records.DEVICES, records.u64(me)) == []
