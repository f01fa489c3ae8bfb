"""Replies and mentions over the real server (REST and WebSocket): the checks of a reply's
target, its quote live and in history, a reply to a message deleted later, and what is
left on disk of the deleted text; mentions parsed, resolved against the members, sent
explicitly, bounded; catch-up after a reconnect."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import trio

from chatd.client import ChatClient, LiveConnection
from chatd.domain.rules import DELETED_CONTENT_TYPE
from chatd.protocol import frames
from tests.conftest import ServerFactory
from tests.helpers import Account, assert_error, disk_marker, live, login, new_account
from tests.web.test_compact import ADMIN, compact, files_holding
from tests.web.test_gdpr import document, exported


async def next_message(connection: LiveConnection, seq: int = 0) -> dict[str, Any]:
    """The next message frame (the one at `seq`, when given: catch-up may come first)."""
    with trio.fail_after(5):
        while True:
            event = await connection.next_event()
            if event["type"] == "message" and event["message"]["seq"] >= seq:
                message: dict[str, Any] = event["message"]
                return message


async def history(account: Account, conversation_id: str) -> dict[int, dict[str, Any]]:
    response = await account.get(f"/messages/{conversation_id}", params={"after": 0})
    assert response.status_code == 200, response.text
    return {message["seq"]: message for message in response.json()["messages"]}


async def send(account: Account, conversation_id: str, body: str, **extra: Any,
               ) -> httpx.Response:
    return await account.post("/messages/send", {
        "conversation_id": conversation_id, "client_msg_id": uuid.uuid4().hex,
        "content_type": "text/plain", "body": body, **extra})


async def sent_seq(account: Account, conversation_id: str, body: str, **extra: Any) -> int:
    response = await send(account, conversation_id, body, **extra)
    assert response.status_code == 201, response.text
    seq: int = response.json()["seq"]
    return seq


# -- replies ---------------------------------------------------------------------------------

async def test_a_reply_carries_a_short_quote_live_and_in_history(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        long_text = "é" + "x" * 98 + "yz-tail"  # 106 characters, 107 bytes of UTF-8
        target = await sent_seq(alice, conversation, long_text)
        async with live(server.url, alice) as connection:
            reply = await sent_seq(bob, conversation, "agreed", reply_to=target)
            frame = await next_message(connection, reply)
        quote = {"sender_id": alice.user_id, "content_type": "text/plain",
                 "text": long_text[:100]}
        assert len(quote["text"]) == 100 and quote["text"].endswith("xy")
        assert (frame["seq"], frame["reply_to"], frame["quote"]) == (reply, target, quote)
        entries = await history(bob, conversation)
        assert entries[reply]["reply_to"] == target
        assert entries[reply]["quote"] == quote
        # A plain message carries none of it.
        assert not {"reply_to", "quote", "mentions", "forwarded"} & set(entries[target])
        # Over WebSocket too, and in the msgpack codec.
        async with ChatClient(server.url, token=bob.token) as client, \
                client.connect("msgpack") as connection:
            sent = await connection.send(conversation, "again", reply_to=target)
        assert (await history(alice, conversation))[sent["seq"]]["quote"] == quote


async def test_no_quote_text_for_an_opaque_body(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        response = await alice.post("/messages/send", {
            "conversation_id": conversation, "client_msg_id": "enc-1",
            "content_type": "application/x-olm",
            "body": base64.b64encode(b"ciphertext that means nothing").decode()})
        assert response.status_code == 201
        target = response.json()["seq"]
        reply = await sent_seq(bob, conversation, "ok", reply_to=target)
        assert (await history(alice, conversation))[reply]["quote"] == {
            "sender_id": alice.user_id, "content_type": "application/x-olm"}


async def test_a_reply_needs_a_message_the_sender_can_read(start_server: ServerFactory,
                                                           ) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob, carol = [await new_account(http) for _ in range(3)]
        group = await alice.group("g", bob)
        early = await sent_seq(alice, group, "before carol joined")
        response = await alice.post(f"/groups/{group}/add",
                                    {"user_ids": [carol.user_id]})
        assert response.status_code == 200, response.text
        head = await sent_seq(alice, group, "after")

        assert_error(await send(carol, group, "re", reply_to=early), 404, "unknown_message")
        assert_error(await send(bob, group, "re", reply_to=head + 5), 404, "unknown_message")
        assert_error(await send(bob, group, "re", reply_to=-1), 400, "invalid_field")
        assert_error(await send(bob, group, "re", reply_to="1"), 400)
        # Not a member: the conversation is unknown, whatever the seq.
        outsider = await new_account(http)
        assert_error(await send(outsider, group, "re", reply_to=head), 404)
        # Carol may answer what she can read; 0 means "not a reply".
        assert await sent_seq(carol, group, "re", reply_to=head) == head + 1
        plain = await sent_seq(carol, group, "plain", reply_to=0)
        assert "reply_to" not in (await history(alice, group))[plain]
        # Nothing refused was written: seqs stay dense.
        assert sorted(await history(alice, group)) == list(range(1, plain + 1))

        async with live(server.url, carol) as connection:
            await connection.send_frame(frames.send_request("r1", group, "w1", "re",
                                                            reply_to=early))
            await connection.send_frame({**frames.send_request("r2", group, "w2", "re"),
                                         "reply_to": True})
            errors = []
            with trio.fail_after(5):
                while len(errors) < 2:
                    event = await connection.next_event()
                    if event["type"] == "error":
                        errors.append((event["req"], event["code"]))
        assert sorted(errors) == [("r1", "unknown_message"), ("r2", "invalid_field")]


async def test_a_reply_to_a_deleted_message_shows_it_deleted_and_keeps_none_of_its_text(
        start_server: ServerFactory) -> None:
    server = await start_server(server={"admin_token": ADMIN})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        marker = disk_marker()
        target = await sent_seq(alice, conversation, f"regrettable {marker}")
        reply = await sent_seq(bob, conversation, "you said what?", reply_to=target)
        assert marker in (await history(bob, conversation))[reply]["quote"]["text"]
        await compact(http)
        assert files_holding(server, marker)  # the scan can fail: the target is on disk

        response = await alice.post(f"/messages/{conversation}/{target}/delete",
                                    {"for": "everyone"})
        assert response.status_code == 204
        entries = await history(bob, conversation)
        assert entries[target]["content_type"] == DELETED_CONTENT_TYPE
        assert entries[reply]["reply_to"] == target
        assert entries[reply]["quote"] == {"sender_id": alice.user_id,
                                           "content_type": DELETED_CONTENT_TYPE,
                                           "deleted": True}
        await compact(http)
        assert files_holding(server, marker) == []
        assert files_holding(server, "you said what?")  # the reply itself stays

        # A reply to the deleted message is still taken, and quotes it as deleted.
        again = await sent_seq(bob, conversation, "still", reply_to=target)
        assert (await history(alice, conversation))[again]["quote"]["deleted"] is True

        # Deleting a reply leaves nothing of what it answered or mentioned.
        response = await bob.post(f"/messages/{conversation}/{again}/delete",
                                  {"for": "everyone"})
        assert response.status_code == 204
        gone = (await history(alice, conversation))[again]
        assert not {"reply_to", "quote", "mentions"} & set(gone)


# -- mentions --------------------------------------------------------------------------------

async def test_mentions_are_resolved_against_the_members(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        bob, carol, dave = [await new_account(http) for _ in range(3)]
        group = await alice.group("g", bob, carol)
        text = (f"hi @{bob.handle.upper()}, thanks @{carol.handle}. and @{dave.handle} "
                f"and @nobody_{uuid.uuid4().hex[:8]} and @{alice.handle} and "
                f"mail@{bob.handle} and @{bob.handle} again")
        async with live(server.url, bob) as connection:
            seq = await sent_seq(alice, group, text)
            frame = await next_message(connection, seq)
        # Members only (not dave, who is not in the group; not the sender), in order,
        # once each; an address is no mention.
        assert frame["mentions"] == [bob.user_id, carol.user_id]
        message = (await history(carol, group))[seq]
        assert message["mentions"] == [bob.user_id, carol.user_id]
        assert message["body"] == text  # shown as plain text, as written

        # Explicit ids (the only way for an encrypted body): members kept.
        response = await alice.post("/messages/send", {
            "conversation_id": group, "client_msg_id": "enc", "content_type":
            "application/x-olm", "body": base64.b64encode(b"opaque").decode(),
            "mentions": [dave.user_id, carol.user_id, carol.user_id]})
        assert response.status_code == 201, response.text
        assert (await history(bob, group))[response.json()["seq"]]["mentions"] == [
            carol.user_id]
        # Explicit and parsed together, over WebSocket.
        async with live(server.url, alice) as connection:
            sent = await connection.send(group, f"@{carol.handle} see this",
                                         mentions=[bob.user_id])
        assert (await history(bob, group))[sent["seq"]]["mentions"] == [
            bob.user_id, carol.user_id]
        # A text mentioning nobody carries no field.
        plain = await sent_seq(alice, group, "no one @ all")
        assert "mentions" not in (await history(bob, group))[plain]


async def test_mentions_are_bounded_and_checked(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        too_many = [str(10**17 + n) for n in range(51)]
        assert_error(await send(alice, conversation, "x", mentions=too_many), 400,
                     "invalid_field")
        assert_error(await send(alice, conversation, "x", mentions=["nope"]), 400)
        assert_error(await send(alice, conversation, "x", mentions=bob.user_id), 400)
        async with live(server.url, alice) as connection:
            await connection.send_frame({**frames.send_request("r1", conversation, "w1",
                                                               "x"), "mentions": too_many})
            with trio.fail_after(5):
                event = await connection.next_event()
        assert (event["type"], event["req"], event["code"]) == ("error", "r1",
                                                                "invalid_field")
        # Fifty handles that do not exist: looked up, none kept, the send goes through.
        text = " ".join(f"@ghost_{n}_{uuid.uuid4().hex[:6]}" for n in range(60))
        seq = await sent_seq(alice, conversation, f"{text} @{bob.handle}")
        assert "mentions" not in (await history(bob, conversation))[seq]  # 51st not read
        seq = await sent_seq(alice, conversation, f"@{bob.handle} {text}")
        assert (await history(bob, conversation))[seq]["mentions"] == [bob.user_id]


async def test_a_mention_counts_toward_unread(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        group = await alice.group("g", bob)

        async def unread() -> int:
            response = await bob.get(f"/conversations/{group}")
            assert response.status_code == 200
            count: int = response.json()["unread"]
            return count

        before = await unread()
        await sent_seq(alice, group, f"@{bob.handle} look")
        assert await unread() == before + 1


# -- catch-up ---------------------------------------------------------------------------------

async def test_catch_up_after_a_reconnect_delivers_replies_in_log_order(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        bob_phone = await login(http, bob.handle, "phone")
        first = await sent_seq(alice, conversation, "first")
        async with live(server.url, bob_phone) as connection:
            seen = await next_message(connection)
            assert seen["seq"] == first
            await connection.ack(conversation, first)
        sent = [await sent_seq(alice, conversation, "second", reply_to=first),
                await sent_seq(alice, conversation, f"@{bob.handle} third")]
        sent.append(await sent_seq(alice, conversation, "fourth", reply_to=sent[0]))
        async with live(server.url, bob_phone) as connection:
            got = [await next_message(connection) for _ in sent]
        assert [message["seq"] for message in got] == sent
        assert got[0]["quote"]["text"] == "first"
        assert got[1]["mentions"] == [bob.user_id]
        assert (got[2]["reply_to"], got[2]["quote"]["text"]) == (sent[0], "second")


async def test_an_export_holds_what_the_user_replied_to_and_mentioned(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        target = await sent_seq(alice, conversation, "alice's secret words")
        reply = await sent_seq(bob, conversation, f"@{alice.handle} ok", reply_to=target)
        archive = await exported(bob)
        [mine] = [m for m in document(archive, "messages.json") if m["seq"] == reply]
        assert (mine["reply_to"], mine["mentions"]) == (target, [alice.user_id])
        # Not the quote: that is alice's text, not bob's data.
        assert "quote" not in mine
        assert b"alice's secret words" not in b"".join(
            archive.read(name) for name in archive.namelist())


async def test_a_quote_shows_the_latest_text_of_an_edited_message(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        target = await sent_seq(alice, conversation, "meet at 8")
        edited = await alice.post(f"/messages/{conversation}/{target}/edit",
                                  {"body": "meet at 9"})
        assert edited.status_code == 200, edited.text
        async with live(server.url, alice) as connection:
            reply = await sent_seq(bob, conversation, "ok", reply_to=target)
            frame = await next_message(connection, reply)
        assert frame["quote"]["text"] == "meet at 9"
        assert (await history(alice, conversation))[reply]["quote"]["text"] == "meet at 9"
        # A reaction or an edit entry can be answered, and quotes no text.
        reacted = await bob.post(f"/messages/{conversation}/{target}/reactions",
                                 {"emoji": "👍"})
        assert reacted.status_code == 200, reacted.text
        entry = max(await history(alice, conversation))
        again = await sent_seq(alice, conversation, "?", reply_to=entry)
        assert "text" not in (await history(bob, conversation))[again]["quote"]
