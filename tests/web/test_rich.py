"""Reactions, edits and pinned messages over the real server (REST and WebSocket): their
rules and bad inputs, what history and conversation views show, unread counts, and
catch-up in log order."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import httpx

from chatd.client import LiveConnection
from chatd.protocol import frames
from chatd.protocol import owner as ops
from chatd.storage import records
from tests.conftest import ServerFactory
from tests.helpers import (
    Account,
    ManualClock,
    assert_error,
    disk_marker,
    live,
    login,
    new_account,
    next_of,
)
from tests.web.test_compact import ADMIN, compact, files_holding

THUMBS, HEART = "👍", "❤️"


async def next_entry(connection: LiveConnection, content_type: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = (await next_of(connection, "message"))["message"]
        if message["content_type"] == content_type:
            return message


async def history(account: Account, conversation_id: str) -> dict[int, dict[str, Any]]:
    response = await account.get(f"/messages/{conversation_id}", params={"after": 0})
    assert response.status_code == 200, response.text
    return {message["seq"]: message for message in response.json()["messages"]}


async def react(account: Account, conversation_id: str, seq: int,
                emoji: str) -> httpx.Response:
    return await account.post(f"/messages/{conversation_id}/{seq}/reactions",
                              {"emoji": emoji})


async def unreact(account: Account, conversation_id: str, seq: int,
                  emoji: str) -> httpx.Response:
    return await account.delete(
        f"/messages/{conversation_id}/{seq}/reactions/{quote(emoji, safe='')}")


async def edit(account: Account, conversation_id: str, seq: int,
               body: str) -> httpx.Response:
    return await account.post(f"/messages/{conversation_id}/{seq}/edit", {"body": body})


async def unread(account: Account, conversation_id: str) -> int:
    response = await account.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    count: int = response.json()["unread"]
    return count


async def test_reactions_one_per_user_replaced_and_removed(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob, carol, stranger = [await new_account(http) for _ in range(4)]
        group = await alice.group("Team", bob, carol)
        seq = (await alice.send(group, "lunch?")).json()["seq"]

        response = await react(bob, group, seq, THUMBS)
        assert response.status_code == 200, response.text
        assert response.json() == {"conversation_id": group, "seq": seq,
                                   "reactions": {THUMBS: {"count": 1, "me": True}}}
        assert (await react(carol, group, seq, THUMBS)).json()["reactions"] == {
            THUMBS: {"count": 2, "me": True}}
        # A new reaction replaces the old: bob has one, a heart.
        assert (await react(bob, group, seq, HEART)).json()["reactions"] == {
            THUMBS: {"count": 1, "me": False}, HEART: {"count": 1, "me": True}}
        # The same again changes nothing and writes no entry.
        head = (await bob.get(f"/conversations/{group}")).json()["last_seq"]
        assert (await react(bob, group, seq, HEART)).status_code == 200
        assert (await bob.get(f"/conversations/{group}")).json()["last_seq"] == head

        shown = await history(alice, group)
        assert shown[seq]["reactions"] == {THUMBS: {"count": 1, "me": False},
                                           HEART: {"count": 1, "me": False}}
        assert (await history(carol, group))[seq]["reactions"][THUMBS]["me"] is True
        # Each change is an entry of the log, in order.
        entries = [message for message in shown.values()
                   if message["content_type"] == "chatd/reaction"]
        assert [entry["body"] for entry in entries] == [
            {"target": seq, "emoji": THUMBS, "notify": [alice.user_id]},
            {"target": seq, "emoji": THUMBS, "notify": [alice.user_id]},
            {"target": seq, "emoji": HEART, "notify": [alice.user_id]}]
        assert [entry["sender_id"] for entry in entries] == [
            bob.user_id, carol.user_id, bob.user_id]

        # Removing another emoji than yours changes nothing; yours goes.
        assert (await unreact(bob, group, seq, THUMBS)).status_code == 204
        assert (await history(bob, group))[seq]["reactions"][HEART]["me"] is True
        assert (await unreact(bob, group, seq, HEART)).status_code == 204
        assert (await history(bob, group))[seq]["reactions"] == {
            THUMBS: {"count": 1, "me": False}}
        removal = max((await history(bob, group)).values(), key=lambda m: m["seq"])
        assert removal["body"] == {"target": seq, "emoji": "", "notify": []}
        # Reacting to your own message notifies nobody.
        own = (await react(alice, group, seq, THUMBS)).json()
        assert own["reactions"] == {THUMBS: {"count": 2, "me": True}}
        newest = max((await history(alice, group)).values(), key=lambda m: m["seq"])
        assert newest["body"]["notify"] == []

        # Bad inputs: not one emoji, a system entry, no such message, not a member.
        for bad in ("a", "👍👍", "", " 👍", "x" * 40, ":+1:"):
            assert_error(await react(bob, group, seq, bad), 400, "invalid_emoji")
        assert_error(await unreact(bob, group, seq, "nope"), 400, "invalid_emoji")
        assert_error(await bob.post(f"/messages/{group}/{seq}/reactions", {"emoji": 7}), 400)
        assert_error(await react(bob, group, 1, THUMBS), 409, "not_reactable")
        assert_error(await react(bob, group, entries[0]["seq"], THUMBS), 409,
                     "not_reactable")
        assert_error(await react(bob, group, 999, THUMBS), 404, "unknown_message")
        assert_error(await react(stranger, group, seq, THUMBS), 404, "unknown_conversation")
        assert_error(await unreact(stranger, group, seq, THUMBS), 404,
                     "unknown_conversation")
        deleted = (await alice.send(group, "oops")).json()["seq"]
        assert (await alice.post(f"/messages/{group}/{deleted}/delete",
                                 {"for": "everyone"})).status_code == 204
        assert_error(await react(bob, group, deleted, THUMBS), 409, "not_reactable")


async def test_the_react_frame_and_live_changes(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        direct = await alice.direct_with(bob)
        seq = (await alice.send(direct, "hello")).json()["seq"]
        async with live(server.url, alice) as alices, live(server.url, bob) as bobs:
            await bobs.send_frame(frames.react_request(direct, seq, THUMBS, req="r1"))
            assert (await next_of(bobs, "ok"))["req"] == "r1"
            change = await next_entry(alices, "chatd/reaction")
            assert change["body"] == {"target": seq, "emoji": THUMBS,
                                      "notify": [alice.user_id]}
            await bobs.send_frame(frames.react_request(direct, seq, "", req="r2"))
            assert (await next_of(bobs, "ok"))["req"] == "r2"
            assert (await next_entry(alices, "chatd/reaction"))["body"]["emoji"] == ""
            await bobs.send_frame(frames.react_request(direct, seq, "nope", req="r3"))
            error = await next_of(bobs, "error")
            assert (error["req"], error["code"]) == ("r3", "invalid_emoji")
            await bobs.send_frame(frames.react_request(direct, 999, THUMBS, req="r4"))
            error = await next_of(bobs, "error")
            assert (error["req"], error["code"]) == ("r4", "unknown_message")
        assert "reactions" not in (await history(alice, direct))[seq]


async def test_edits_within_the_window_by_the_sender(start_server: ServerFactory) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        direct = await alice.direct_with(bob)
        sent = (await alice.send(direct, "helo")).json()
        seq = sent["seq"]
        clock.now += 1000
        response = await edit(alice, direct, seq, "hello")
        assert response.status_code == 200, response.text
        first = response.json()
        assert first["edited_at"] == clock.now and first["seq"] == seq + 1
        clock.now += 1000
        second = (await edit(alice, direct, seq, "hello!")).json()
        # The same body again (a retry) is the same edit.
        assert (await edit(alice, direct, seq, "hello!")).json() == second

        shown = await history(bob, direct)
        assert shown[seq]["body"] == "hello!" and shown[seq]["edited_at"] == second["edited_at"]
        assert shown[first["seq"]]["content_type"] == "chatd/edit"
        assert shown[first["seq"]]["body"] == {"target": seq, "body": "hello"}
        response = await bob.get(f"/messages/{direct}/{seq}/edits")
        assert response.json() == {"edits": [
            {"seq": seq, "body": "helo", "ts": sent["ts"]},
            {"seq": first["seq"], "body": "hello", "ts": first["edited_at"]},
            {"seq": second["seq"], "body": "hello!", "ts": second["edited_at"]}]}
        never = (await alice.send(direct, "plain")).json()["seq"]
        assert "edited_at" not in (await history(bob, direct))[never]

        # Another user; a system entry; an edit entry; a stranger; bad bodies.
        assert_error(await edit(bob, direct, seq, "mine now"), 403, "not_sender")
        assert_error(await edit(alice, direct, first["seq"], "x"), 409, "not_editable")
        stranger = await new_account(http)
        assert_error(await edit(stranger, direct, seq, "x"), 404, "unknown_conversation")
        assert_error(await stranger.get(f"/messages/{direct}/{seq}/edits"), 404,
                     "unknown_conversation")
        assert_error(await alice.post(f"/messages/{direct}/{seq}/edit", {}), 400,
                     "missing_field")
        assert_error(await edit(alice, direct, seq, "x" * 70_000), 413, "body_too_large")
        # After the window (default 900 s): refused.
        clock.now += 900 * 1000
        assert_error(await edit(alice, direct, seq, "too late"), 403, "edit_window_passed")

        # An opaque (end-to-end encrypted) message takes new bytes as base64.
        cipher = await alice.post("/messages/send", {
            "conversation_id": direct, "client_msg_id": "e2e-1",
            "content_type": "application/x-olm", "body": base64.b64encode(b"\x01").decode()})
        opaque = cipher.json()["seq"]
        new = base64.b64encode(b"\x02\x03").decode()
        assert (await edit(alice, direct, opaque, new)).status_code == 200
        assert (await history(bob, direct))[opaque]["body"] == new
        assert_error(await edit(alice, direct, opaque, "not base64!"), 400, "invalid_field")


async def test_pins(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        admin, bob = await new_account(http), await new_account(http)
        group = await admin.group("Team", bob)
        seqs = [(await bob.send(group, f"m{n}")).json()["seq"] for n in range(5)]
        for seq in seqs[:3]:
            response = await admin.post(f"/conversations/{group}/pins/{seq}")
            assert response.status_code == 204, response.text
        # Pinning one that is pinned changes nothing; a fourth is refused.
        assert (await admin.post(f"/conversations/{group}/pins/{seqs[0]}")).status_code == 204
        assert_error(await admin.post(f"/conversations/{group}/pins/{seqs[3]}"), 409,
                     "too_many_pins")
        assert_error(await bob.post(f"/conversations/{group}/pins/{seqs[3]}"), 403,
                     "not_an_admin")
        assert_error(await bob.delete(f"/conversations/{group}/pins/{seqs[0]}"), 403,
                     "not_an_admin")
        view = (await bob.get(f"/conversations/{group}")).json()
        assert view["pins"] == seqs[:3]
        listed = (await bob.get("/conversations")).json()["conversations"]
        assert [conv["pins"] for conv in listed if conv["conversation_id"] == group] == [
            seqs[:3]]
        assert (await admin.delete(f"/conversations/{group}/pins/{seqs[1]}")).status_code == 204
        assert (await admin.delete(f"/conversations/{group}/pins/{seqs[1]}")).status_code == 204
        assert (await admin.post(f"/conversations/{group}/pins/{seqs[3]}")).status_code == 204
        assert (await bob.get(f"/conversations/{group}")).json()["pins"] == [
            seqs[0], seqs[2], seqs[3]]
        pin_entries = [m["body"] for m in (await history(bob, group)).values()
                       if m["content_type"] == "chatd/pin"]
        assert pin_entries == [{"target": seqs[0], "pinned": True},
                               {"target": seqs[1], "pinned": True},
                               {"target": seqs[2], "pinned": True},
                               {"target": seqs[1], "pinned": False},
                               {"target": seqs[3], "pinned": True}]
        # The log's own entries cannot be pinned; a deleted message is unpinned.
        assert (await admin.delete(f"/conversations/{group}/pins/{seqs[0]}")).status_code == 204
        assert_error(await admin.post(f"/conversations/{group}/pins/1"), 409, "not_pinnable")
        assert (await admin.post(f"/messages/{group}/{seqs[2]}/delete",
                                 {"for": "everyone"})).status_code == 204
        assert (await bob.get(f"/conversations/{group}")).json()["pins"] == [seqs[3]]
        assert_error(await admin.post(f"/conversations/{group}/pins/{seqs[2]}"), 409,
                     "not_pinnable")
        # Either member of a direct chat pins.
        direct = await bob.direct_with(admin)
        seq = (await admin.send(direct, "address")).json()["seq"]
        assert (await bob.post(f"/conversations/{direct}/pins/{seq}")).status_code == 204
        assert (await admin.get(f"/conversations/{direct}")).json()["pins"] == [seq]
        stranger = await new_account(http)
        assert_error(await stranger.post(f"/conversations/{direct}/pins/{seq}"), 404,
                     "unknown_conversation")


async def test_unread_counts_skip_reactions_edits_and_pins(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        group = await alice.group("Team", bob)
        seq = (await alice.send(group, "one")).json()["seq"]
        read = await bob.post(f"/conversations/{group}/read", {"seq": seq})
        assert read.status_code == 200, read.text
        assert await unread(bob, group) == 0
        # Reactions, edits and pins after bob's read mark: still nothing unread.
        assert (await react(alice, group, seq, THUMBS)).status_code == 200
        assert (await edit(alice, group, seq, "one!")).status_code == 200
        assert (await alice.post(f"/conversations/{group}/pins/{seq}")).status_code == 204
        assert await unread(bob, group) == 0
        # Messages count (a mention is a message); entries between them do not.
        await alice.send(group, "two, @bob")
        assert (await react(alice, group, seq, HEART)).status_code == 200
        await alice.send(group, "three")
        assert await unread(bob, group) == 2
        listed = (await bob.get("/conversations")).json()["conversations"]
        assert [conv["unread"] for conv in listed if conv["conversation_id"] == group] == [2]
        # Reacting marks nothing read: alice reacting leaves her own count alone, and
        # bob reacting does not clear his.
        assert (await react(bob, group, seq, THUMBS)).status_code == 200
        assert await unread(bob, group) == 2
        assert await unread(alice, group) == 0


async def test_catch_up_delivers_reactions_and_edits_in_log_order(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        bob_phone = await login(http, bob.handle, "phone")
        direct = await alice.direct_with(bob)
        async with live(server.url, bob_phone) as socket:
            first = (await alice.send(direct, "first")).json()["seq"]
            message = (await next_of(socket, "message"))["message"]
            await socket.ack(direct, message["seq"])
            await socket.ping()  # (answered once the ack before it was taken)
        # While bob's phone is away: a reaction, an edit, a message, another reaction.
        assert (await react(bob, direct, first, THUMBS)).status_code == 200
        assert (await edit(alice, direct, first, "first, edited")).status_code == 200
        second = (await alice.send(direct, "second")).json()["seq"]
        assert (await react(alice, direct, second, HEART)).status_code == 200
        async with live(server.url, bob_phone) as socket:
            caught = [(await next_of(socket, "message"))["message"] for _ in range(4)]
        assert [(m["content_type"], m["body"]) for m in caught] == [
            ("chatd/reaction", {"target": first, "emoji": THUMBS,
                                "notify": [alice.user_id]}),
            ("chatd/edit", {"target": first, "body": "first, edited"}),
            ("text/plain", "second"),
            ("chatd/reaction", {"target": second, "emoji": HEART, "notify": []})]
        assert [m["seq"] for m in caught] == list(range(first + 1, first + 5))


async def test_delete_for_everyone_takes_reactions_and_edits_off_the_disk(
        start_server: ServerFactory) -> None:
    server = await start_server(server={"admin_token": ADMIN})
    store = server.services.store
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        direct = await alice.direct_with(bob)
        marker = disk_marker()
        seq = (await alice.send(direct, f"original {marker}")).json()["seq"]
        assert (await edit(alice, direct, seq, f"edited {marker}")).status_code == 200
        assert (await edit(alice, direct, seq, f"again {marker}")).status_code == 200
        assert (await react(bob, direct, seq, THUMBS)).status_code == 200
        assert (await react(bob, direct, seq, HEART)).status_code == 200
        assert (await react(alice, direct, seq, THUMBS)).status_code == 200
        kept = (await alice.send(direct, "an innocent neighbour")).json()["seq"]
        assert (await react(bob, direct, kept, THUMBS)).status_code == 200
        conversation_id = int(direct)
        assert len(store.scan(records.REACTIONS, records.pair(conversation_id, seq))) == 2
        assert len(store.scan(records.EDITS, records.pair(conversation_id, seq))) == 2
        await compact(http)
        assert any(name.endswith(".sst") for name in files_holding(server, marker))

        response = await alice.post(f"/messages/{direct}/{seq}/delete", {"for": "everyone"})
        assert response.status_code == 204
        for family in (records.REACTIONS, records.REACTION_ENTRIES, records.EDITS):
            assert store.scan(family, records.pair(conversation_id, seq)) == []
        shown = await history(bob, direct)
        # The message, its edits and its reactions are tombstones now; the neighbour
        # keeps its reaction.
        targeting = [m for m in shown.values() if m["seq"] > seq and m["seq"] < kept]
        assert targeting and all(m["content_type"] == "chatd/deleted" and m["body"] == ""
                                 for m in targeting)
        assert shown[seq]["content_type"] == "chatd/deleted" and "reactions" not in shown[seq]
        assert shown[kept]["reactions"] == {THUMBS: {"count": 1, "me": True}}
        assert (await bob.get(f"/messages/{direct}/{seq}/edits")).json() == {"edits": []}
        await compact(http)
        assert files_holding(server, marker) == []
        assert files_holding(server, "an innocent neighbour")


async def test_disappearing_reactions_and_edits_expire(start_server: ServerFactory) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, server={"admin_token": ADMIN})
    store = server.services.store
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        direct = await alice.direct_with(bob)
        # Sent before the timer: the message itself stays; what is done to it expires.
        seq = (await alice.send(direct, "stays")).json()["seq"]
        response = await alice.patch(f"/conversations/{direct}", {"disappearing_s": 86_400})
        assert response.status_code == 200
        marker = disk_marker()
        assert (await edit(alice, direct, seq, f"edited {marker}")).status_code == 200
        assert (await react(bob, direct, seq, THUMBS)).status_code == 200
        shown = await history(bob, direct)
        entries = [m for m in shown.values() if m["content_type"] in ("chatd/edit",
                                                                       "chatd/reaction")]
        assert len(entries) == 2 and all(m["expires_at"] for m in entries)
        assert shown[seq]["body"] == f"edited {marker}"
        assert shown[seq]["reactions"] == {THUMBS: {"count": 1, "me": True}}

        clock.now += 86_400_000
        # Due: reads show them gone before the sweep writes the tombstones ...
        shown = await history(bob, direct)
        assert shown[seq]["body"] == "stays" and "edited_at" not in shown[seq]
        assert "reactions" not in shown[seq]
        # ... and the sweep (run by compact) removes the aggregates and the text.
        await compact(http)
        conversation_id = int(direct)
        for family in (records.REACTIONS, records.REACTION_ENTRIES, records.EDITS):
            assert store.scan(family, records.pair(conversation_id, seq)) == []
        assert files_holding(server, marker) == []
        edits_now = (await bob.get(f"/messages/{direct}/{seq}/edits")).json()["edits"]
        assert [entry["body"] for entry in edits_now] == ["stays"]


async def test_erasing_a_member_takes_their_reactions_and_edits(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob, carol = [await new_account(http) for _ in range(3)]
        group = await alice.group("Team", bob, carol)
        alices = (await alice.send(group, "alice's")).json()["seq"]
        bobs = (await bob.send(group, "bob's")).json()["seq"]
        assert (await edit(bob, group, bobs, "bob's, edited")).status_code == 200
        for account in (bob, carol):
            assert (await react(account, group, alices, THUMBS)).status_code == 200
        assert (await react(carol, group, bobs, HEART)).status_code == 200
        assert (await alice.post(f"/conversations/{group}/pins/{bobs}")).status_code == 204

        erase = ops.EraseMember(int(group), int(bob.user_id))
        assert await server.services.router.ask(erase) is None
        shown = await history(carol, group)
        # Bob's reaction is gone from alice's message; his message, its edit, its
        # reactions and its pin are gone.
        assert shown[alices]["reactions"] == {THUMBS: {"count": 1, "me": True}}
        assert shown[bobs]["content_type"] == "chatd/deleted" and "reactions" not in shown[bobs]
        assert not [m for m in shown.values() if m["content_type"] == "chatd/edit"]
        assert (await carol.get(f"/conversations/{group}")).json()["pins"] == []
        store = server.services.store
        assert store.scan(records.REACTIONS, records.pair(int(group), bobs)) == []
        assert store.scan(records.EDITS, records.pair(int(group), bobs)) == []


async def test_reactions_edits_and_pins_take_from_the_messages_bucket(
        start_server: ServerFactory) -> None:
    server = await start_server(ratelimits={"messages_per_account": "5/1h burst 5"})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        direct = await alice.direct_with(bob)
        seq = (await alice.send(direct, "hi")).json()["seq"]  # 1 of 5
        assert (await react(alice, direct, seq, THUMBS)).status_code == 200
        assert (await edit(alice, direct, seq, "hi!")).status_code == 200
        assert (await alice.post(f"/conversations/{direct}/pins/{seq}")).status_code == 204
        assert (await unreact(alice, direct, seq, THUMBS)).status_code == 204  # 5 of 5
        refused = await react(alice, direct, seq, HEART)
        assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["Retry-After"]) > 0
        async with live(server.url, alice) as socket:
            await socket.send_frame(frames.react_request(direct, seq, HEART, req="r1"))
            error = await next_of(socket, "error")
            assert (error["req"], error["code"]) == ("r1", "rate_limited")
        assert (await react(bob, direct, seq, HEART)).status_code == 200  # bob's own bucket


async def test_a_block_stops_reactions_edits_as_it_stops_sends(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        direct = await alice.direct_with(bob)
        seq = (await alice.send(direct, "hi")).json()["seq"]
        bobs = (await bob.send(direct, "hello")).json()["seq"]
        assert (await alice.post(f"/blocks/{bob.user_id}")).status_code in (200, 204)
        assert_error(await react(bob, direct, seq, THUMBS), 403, "cannot_message")
        assert_error(await edit(bob, direct, bobs, "hello?"), 403, "cannot_message")
        assert_error(await react(alice, direct, bobs, THUMBS), 403, "you_blocked")
        assert "reactions" not in (await history(alice, direct))[seq]
