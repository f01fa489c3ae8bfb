"""Receipts as WhatsApp sends them: to the senders of what a watermark move covers."""

from __future__ import annotations

from typing import Any

import trio

from chatd.client import ChatClient, LiveConnection
from chatd.protocol import frames
from chatd.protocol import websocket as ws
from chatd.server import RunningServer
from tests.helpers import PASSWORD
from tests.web.test_ws import direct, messages, nothing_more, uid, user


async def receipts(live: LiveConnection, wait: float = 0.3) -> list[dict[str, Any]]:
    """Every receipt that arrives within `wait` seconds of quiet."""
    found: list[dict[str, Any]] = []
    while True:
        with trio.move_on_after(wait) as quiet:
            event = await live.next_event()
            if event["type"] == "receipt":
                found.append(event)
        if quiet.cancelled_caught:
            return found


async def test_in_a_group_only_the_senders_learn_and_on_every_device(
        server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob, user(server) as carol, \
            user(server) as dave:
        group = (await alice.create_group("Team", [uid(bob), uid(carol), uid(dave)]))[
            "conversation_id"]
        async with ChatClient(server.url) as alice_phone:
            handle = (await alice.request("GET", "/me"))["handle"]
            await alice_phone.login(handle, PASSWORD, "phone")
            async with alice.connect() as a, alice_phone.connect("msgpack") as a2, \
                    bob.connect() as b, carol.connect() as c, dave.connect() as d:
                await a.send(group, "from alice")
                await c.send(group, "from carol")
                got = await messages(b, 3)  # the group_created entry, then the two
                assert [m["body"] for m in got[1:]] == ["from alice", "from carol"]
                await messages(d, 3)
                await b.ack(group, got[-1]["seq"])
                # Both senders of the covered messages hear of it, on all their devices.
                for name, device in (("alice", a), ("alice's phone", a2), ("carol", c)):
                    found = await receipts(device)
                    assert len(found) == 1, (name, found)
                    [receipt] = found
                    assert receipt["user_id"] == uid(bob)
                    assert receipt["delivered_seq"] == got[-1]["seq"]
                # A member who sent nothing in the range hears nothing.
                await nothing_more(d, "receipt")
                # Reading moves the read watermark: the same senders are told.
                await b.read(group, got[-1]["seq"])
                [receipt] = await receipts(a)
                assert receipt["read_seq"] == got[-1]["seq"]
                await nothing_more(d, "receipt")
                # Anyone may still ask a message's status.
                status = await dave.request("GET", f"/messages/{group}/{got[0]['seq']}/status")
                by_user = {m["user_id"]: (m["delivered"], m["read"]) for m in status["members"]}
                assert by_user[uid(bob)] == (True, True)
                assert by_user[uid(dave)] == (False, False)


async def test_a_burst_of_acks_is_one_receipt(server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob:
        conv = (await direct(alice, bob))["conversation_id"]
        async with alice.connect() as a, bob.connect() as b:
            for n in range(50):
                await a.send(conv, f"m{n}")
            got = await messages(b, 50)
            # 50 acks in one write: one read of them, one watermark move, one receipt.
            await b.socket.stream.send_all(b"".join(
                ws.encode_frame(ws.OP_TEXT, str(frames.encode_request(
                    frames.ack_request(conv, m["seq"]), "json")).encode(), mask=True)
                for m in got))
            await b.ping()
            found = await receipts(a)
            assert len(found) == 1, found
            assert found[0]["delivered_seq"] == 50


async def test_read_receipts_off_hides_reads_both_ways(server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob, user(server) as carol:
        group = (await alice.create_group("Team", [uid(bob), uid(carol)]))["conversation_id"]
        await bob.request("PATCH", "/me", {"read_receipts": False})
        async with alice.connect() as a, bob.connect() as b, carol.connect() as c:
            sent = await a.send(group, "hello")
            await messages(b, 1)
            await b.ack(group, sent["seq"])
            [delivered] = await receipts(a)
            assert delivered["delivered_seq"] == sent["seq"] and "read_seq" not in delivered
            await b.read(group, sent["seq"])
            assert await receipts(a) == []  # only the hidden read watermark moved
            # Bob does not see others' reads either: Carol reading his message tells him
            # of delivery only.
            mine = await b.send(group, "from bob")
            await messages(c, 3)
            await c.read(group, mine["seq"])
            [seen] = await receipts(b)
            assert seen["delivered_seq"] == mine["seq"] and "read_seq" not in seen
            status = await bob.request("GET", f"/messages/{group}/{mine['seq']}/status")
            reads = {m["user_id"]: m["read"] for m in status["members"]}
            assert reads[uid(carol)] is None and reads[uid(bob)] is True
            status = await alice.request("GET", f"/messages/{group}/{sent['seq']}/status")
            assert {m["user_id"]: m["read"] for m in status["members"]}[uid(bob)] is None


async def test_direct_chats_tell_the_other_side(server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob:
        conv = (await direct(alice, bob))["conversation_id"]
        async with alice.connect() as a, bob.connect() as b:
            sent = await a.send(conv, "hi")
            await messages(b, 1)
            await b.read(conv, sent["seq"])
            [receipt] = await receipts(a)
            assert (receipt["delivered_seq"], receipt["read_seq"]) == (1, 1)
            await nothing_more(b, "receipt")


async def test_an_ack_tells_only_the_sender_of_what_it_covers(server: RunningServer) -> None:
    """An ack moves only the delivered watermark: the unmoved read watermark must not
    widen the range to every message since the reader last read."""
    async with user(server) as alice, user(server) as bob, user(server) as carol:
        group = (await alice.create_group("Team", [uid(bob), uid(carol)]))["conversation_id"]
        async with alice.connect() as a, bob.connect() as b, carol.connect() as c:
            first = await a.send(group, "from alice")
            await messages(c, 2)
            await c.ack(group, first["seq"])
            assert len(await receipts(a)) == 1
            second = await b.send(group, "from bob")
            await messages(c, 1)
            await c.ack(group, second["seq"])
            assert len(await receipts(b)) == 1
            await nothing_more(a, "receipt")  # alice's message was acked before


async def test_two_connections_of_one_device_cannot_move_its_cursor_back(
        server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob:
        conv = (await direct(alice, bob))["conversation_id"]
        for n in range(5):
            await alice.send(conv, f"m{n}")
        async with bob.connect() as first, bob.connect() as second:
            await messages(first, 5)
            await first.ack(conv, 5)
            await second.ack(conv, 2)  # a stale connection of the same device
        server.services.committer.enqueue(lambda batch: None, durable=False)
        await trio.sleep(0.1)  # the hints have been written
        async with bob.connect() as again:
            await again.ping()
            await nothing_more(again, "message")
