"""Deleting messages and disappearing messages over the real server (REST and
WebSocket): who may, what members see live and in history, what storage keeps."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import trio

from chatd.domain.rules import DELETED_CONTENT_TYPE
from chatd.protocol import owner as ops
from chatd.server import RunningServer
from chatd.services import owner_api as owner_api_module
from chatd.storage import records
from tests.conftest import ServerFactory
from tests.helpers import (
    UNLIMITED_SENDS,
    Account,
    ManualClock,
    assert_error,
    live,
    login,
    new_account,
    next_of,
)

WINDOW_S = 172_800


async def history(account: Account, conversation_id: str) -> dict[int, dict[str, Any]]:
    response = await account.get(f"/messages/{conversation_id}", params={"after": 0})
    assert response.status_code == 200, response.text
    return {message["seq"]: message for message in response.json()["messages"]}


async def delete(account: Account, conversation_id: str, seq: int,
                 whose: str = "everyone") -> httpx.Response:
    return await account.post(f"/messages/{conversation_id}/{seq}/delete", {"for": whose})


async def upload(account: Account, data: bytes) -> dict[str, str]:
    response = await account.http.post("/media/upload", content=data, headers={
        **account.headers, "Content-Type": "text/plain"})
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


def raw_messages(server: RunningServer) -> list[bytes]:
    return [value for _, value in server.services.store.scan_raw("messages", limit=100_000)]


async def test_the_sender_deletes_for_everyone_within_the_window(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        marker = f"secret-{uuid.uuid4().hex}"
        media = await upload(alice, marker.encode())
        response = await alice.post("/messages/send", {
            "conversation_id": conversation, "client_msg_id": "m1",
            "content_type": "text/plain", "body": marker,
            "attachments": [{"media_id": media["media_id"]}]})
        assert response.status_code == 201
        seq = response.json()["seq"]
        conversation_id, media_id = int(conversation), int(media["media_id"])
        store = server.services.store
        assert store.get(records.MEDIA_REFS, (conversation_id, media_id)) is not None
        assert (await bob.http.get(media["url"], headers=bob.headers)).status_code == 200

        async with live(server.url, bob) as bobs_socket:
            assert (await delete(alice, conversation, seq)).status_code == 204
            seen: dict[str, dict[str, Any]] = {}
            with trio.fail_after(5):
                while len(seen) < 2:
                    event = await bobs_socket.next_event()
                    seen[event["type"]] = event
            assert seen["message_deleted"] == {
                "type": "message_deleted", "conversation_id": conversation, "seq": seq,
                "deleted_by": alice.user_id}
            assert seen["message"]["message"]["body"] == {
                "event": "message_deleted", "actor_id": alice.user_id, "seq": seq}

        for account in (alice, bob):
            shown = await history(account, conversation)
            assert shown[seq]["content_type"] == DELETED_CONTENT_TYPE
            assert shown[seq]["body"] == "" and "attachments" not in shown[seq]
            assert shown[seq + 1]["body"]["event"] == "message_deleted"
        assert not any(marker.encode() in raw for raw in raw_messages(server))
        # The conversation's reference went with the message: nobody reaches the media
        # through it, and once the release is done the media itself is gone.
        assert store.get(records.MEDIA_REFS, (conversation_id, media_id)) is None
        assert (await bob.http.get(media["url"], headers=bob.headers)).status_code == 404
        report = await server.services.sweeper.sweep()
        assert report.released == 1
        assert store.get(records.MEDIA, media_id) is None
        assert store.get(records.MEDIA_CONVERSATIONS, (media_id, conversation_id)) is None

        # Again: nothing changes; a resend with the same client_msg_id brings nothing back.
        assert (await delete(alice, conversation, seq)).status_code == 204
        again = await alice.post("/messages/send", {
            "conversation_id": conversation, "client_msg_id": "m1",
            "content_type": "text/plain", "body": marker})
        assert again.json()["seq"] == seq
        assert (await history(alice, conversation))[seq]["body"] == ""


async def test_who_may_delete_for_everyone(start_server: ServerFactory) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        admin, bob, carol, stranger = [await new_account(http) for _ in range(4)]
        group = await admin.group("Team", bob, carol)
        first = (await bob.send(group, "bob's first")).json()["seq"]
        second = (await bob.send(group, "bob's second")).json()["seq"]
        # Another member who is no admin: 403; a stranger: 404 as for everything.
        assert_error(await delete(carol, group, first), 403, "not_sender")
        assert_error(await delete(stranger, group, first), 404, "unknown_conversation")
        assert_error(await delete(bob, group, 999), 404, "unknown_message")
        # The log's own entries (seq 1: group_created) cannot be deleted.
        assert_error(await delete(admin, group, 1), 409, "not_deletable")
        # Past the window the sender may not; an admin still may.
        clock.now += WINDOW_S * 1000 + 1000
        assert_error(await delete(bob, group, first), 403, "delete_window_passed")
        assert (await delete(admin, group, first)).status_code == 204
        assert (await history(carol, group))[first]["content_type"] == DELETED_CONTENT_TYPE
        assert (await history(carol, group))[second]["body"] == "bob's second"
        assert_error(await bob.post(f"/messages/{group}/{second}/delete", {"for": "all"}),
                     400, "bad_request")


async def test_a_long_hidden_run_is_skipped_in_bounded_steps(
        start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page (and a catch-up read) over entries the reader hid skips at most
    HIDDEN_SKIP of them, then answers with a tombstone of the last one read, to page on
    from: a hidden run of any length costs the owner's loop a bounded read."""
    monkeypatch.setattr(owner_api_module, "HIDDEN_SKIP", 4)
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        first = (await bob.send(conversation, "first")).json()["seq"]
        run = [(await bob.send(conversation, f"hidden {n}")).json()["seq"] for n in range(9)]
        for seq in run:
            assert (await delete(alice, conversation, seq, "me")).status_code == 204
        # Newest first, one at a time: tombstones every 4 hidden entries, then "first".
        seen, before = [], None
        while True:
            params = {"limit": 1, **({"before": before} if before else {})}
            page = (await alice.get(f"/messages/{conversation}", params=params)).json()
            seen += [(m["seq"], m["content_type"]) for m in page["messages"]]
            if not page["has_more"]:
                break
            before = page["messages"][0]["seq"]
        assert seen[:3] == [(run[5], DELETED_CONTENT_TYPE), (run[1], DELETED_CONTENT_TYPE),
                            (first, "text/plain")]
        # Catch-up likewise: it moves on by a tombstone, never answers empty below the head.
        read_log = server.services.owner_api.read_log
        rows, head = read_log(ops.ReadLog(int(conversation), int(alice.user_id), first, 2,
                                          1 << 20))
        assert [(row.seq, row.content_type) for row in rows] == [(run[3], "chatd/deleted")]
        assert head == run[-1]


async def test_delete_for_me_hides_it_on_my_devices_only(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        alice_tablet = await login(http, alice.handle, "tablet")
        conversation = await alice.direct_with(bob)
        hidden = (await bob.send(conversation, "hide me")).json()["seq"]
        kept = (await bob.send(conversation, "keep me")).json()["seq"]
        async with live(server.url, alice) as phone, live(server.url, alice_tablet) as tablet, \
                live(server.url, bob) as bobs:
            assert (await delete(alice, conversation, hidden, "me")).status_code == 204
            for socket in (phone, tablet):
                event = await next_of(socket, "message_hidden")
                assert event == {"type": "message_hidden", "conversation_id": conversation,
                                 "seq": hidden}
            with trio.move_on_after(0.3):
                event = await bobs.next_event()
                assert event["type"] != "message_hidden", event
        assert set(await history(alice, conversation)) == {kept}
        assert set(await history(alice_tablet, conversation)) == {kept}
        assert (await history(bob, conversation))[hidden]["body"] == "hide me"
        # Catch-up (what a socket syncs) leaves it out for alice only.
        read_log = server.services.owner_api.read_log
        rows, head = read_log(ops.ReadLog(int(conversation), int(alice.user_id), 0, 100,
                                          1 << 20))
        assert [row.seq for row in rows] == [kept] and head == kept
        rows, _ = read_log(ops.ReadLog(int(conversation), int(bob.user_id), 0, 100, 1 << 20))
        assert [row.seq for row in rows] == [hidden, kept]


async def test_who_sets_disappearing_messages(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        admin, bob, stranger = [await new_account(http) for _ in range(3)]
        direct = await bob.direct_with(admin)
        response = await bob.patch(f"/conversations/{direct}", {"disappearing_s": 86_400})
        assert response.status_code == 200, response.text
        assert response.json()["disappearing_s"] == 86_400
        sent = (await admin.send(direct, "fleeting")).json()
        shown = await history(bob, direct)
        assert shown[sent["seq"]]["expires_at"] == sent["ts"] + 86_400_000
        timer_entry = shown[sent["seq"] - 1]
        assert timer_entry["body"]["event"] == "disappearing_set"
        assert timer_entry["body"]["disappearing_s"] == 86_400
        assert "expires_at" not in timer_entry  # the log's own entries never expire
        assert_error(await bob.patch(f"/conversations/{direct}", {"disappearing_s": 5}),
                     400, "invalid_field")
        assert_error(await bob.patch(f"/conversations/{direct}", {"anyone_sets_timer": True}),
                     400, "not_a_group")
        assert_error(await stranger.patch(f"/conversations/{direct}",
                                          {"disappearing_s": 0}), 404)

        group = await admin.group("Team", bob)
        assert_error(await bob.patch(f"/conversations/{group}", {"disappearing_s": 604_800}),
                     403, "not_an_admin")
        assert_error(await bob.patch(f"/conversations/{group}", {"anyone_sets_timer": True}),
                     403, "not_an_admin")
        response = await admin.patch(f"/conversations/{group}", {"anyone_sets_timer": True})
        assert response.status_code == 200 and response.json()["anyone_sets_timer"] is True
        response = await bob.patch(f"/conversations/{group}", {"disappearing_s": 7_776_000})
        assert response.status_code == 200 and response.json()["disappearing_s"] == 7_776_000
        events = [m["body"]["event"] for m in (await history(admin, group)).values()
                  if m["content_type"] == "chatd/system"]
        assert events[-2:] == ["timer_permission_set", "disappearing_set"]
        # Off again: later messages carry no expiry.
        await bob.patch(f"/conversations/{group}", {"disappearing_s": 0})
        plain = (await admin.send(group, "stays")).json()["seq"]
        assert "expires_at" not in (await history(admin, group))[plain]
