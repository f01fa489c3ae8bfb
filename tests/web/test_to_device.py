"""To-device messages (issue 14): POST /to_device, `to_device` frames, `to_device_ack`.

A real server on port 0 with RocksDB in a temp dir and real WebSocket clients: delivery
exactly once per device across a disconnect, acknowledgements deleting, the queue caps,
"*", idempotent txn_ids, the rate limit, revoked devices, bad input.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio

from chatd.client import ApiError, ChatClient, LiveConnection
from chatd.server import RunningServer
from chatd.storage import records
from tests.conftest import ServerFactory
from tests.helpers import Account, ManualClock, assert_error, login, new_account


def olm(n: int) -> dict[str, Any]:
    return {"type": "chatd.olm", "content": {"ciphertext": f"opaque-{n}", "n": n}}


async def frames_until(connection: LiveConnection, count: int) -> list[dict[str, Any]]:
    """The next `count` to_device frames (other events skipped), within 5 s."""
    found: list[dict[str, Any]] = []
    with trio.fail_after(5):
        while len(found) < count:
            event = await connection.next_event()
            if event["type"] == "to_device":
                found.append(event)
    return found


async def no_to_device(connection: LiveConnection, seconds: float = 0.3) -> None:
    with trio.move_on_after(seconds):
        while True:
            event = await connection.next_event()
            assert event["type"] != "to_device", event


def rows_of(server: RunningServer, account: Account) -> list[int]:
    """The to-device ids queued on disk for the account's device."""
    return [key[2] for key, _ in server.services.store.scan(
        records.TO_DEVICE, records.pair(int(account.user_id), int(account.device_id)))]


async def test_delivered_exactly_once_per_device_across_a_disconnect(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob1 = await new_account(http)
        bob2 = await login(http, bob1.handle, "second device")
        async with ChatClient(server.url, token=alice.token) as sender, \
                ChatClient(server.url, token=bob1.token) as phone, \
                ChatClient(server.url, token=bob2.token) as laptop:
            async with phone.connect() as live:
                answer = await sender.send_to_device({bob1.user_id: {"*": olm(1)}},
                                                     txn_id="t1")
                assert answer == {"queued": 2}
                [first] = await frames_until(live, 1)
                assert first == {"type": "to_device", "id": 1,
                                 "sender_user_id": alice.user_id,
                                 "sender_device_id": alice.device_id,
                                 "message_type": "chatd.olm",
                                 "content": {"ciphertext": "opaque-1", "n": 1}}
            # Offline now, nothing acknowledged: a second message queues behind the first.
            await sender.send_to_device({bob1.user_id: {bob1.device_id: olm(2)}})
            async with phone.connect() as live:
                # The server sends 1 again (never acknowledged); the client drops it.
                got = await frames_until(live, 1)
                assert [frame["id"] for frame in got] == [2]
                assert got[0]["content"]["n"] == 2
                await no_to_device(live)
            # A client that remembers nothing gets the whole queue, in order.
            async with ChatClient(server.url, token=bob1.token) as fresh, \
                    fresh.connect() as live:
                got = await frames_until(live, 2)
                assert [(frame["id"], frame["content"]["n"]) for frame in got] == [
                    (1, 1), (2, 2)]
                await live.ack_to_device(2)
            assert rows_of(server, bob1) == []
            # The other device got only the "*" message, under its own ids.
            async with laptop.connect() as live:
                got = await frames_until(live, 1)
                assert [(frame["id"], frame["content"]["n"]) for frame in got] == [(1, 1)]
                await no_to_device(live)
            # Ids keep growing after the queue emptied (a client drops ids it has seen).
            await sender.send_to_device({bob1.user_id: {bob1.device_id: olm(3)}})
            async with phone.connect() as live:
                got = await frames_until(live, 1)
                assert [(frame["id"], frame["content"]["n"]) for frame in got] == [(3, 3)]


async def test_live_while_connected_in_order_and_ack_deletes(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        async with ChatClient(server.url, token=alice.token) as sender, \
                ChatClient(server.url, token=bob.token) as receiver, \
                receiver.connect() as live:
            for n in range(1, 31):
                await sender.send_to_device({bob.user_id: {bob.device_id: olm(n)}})
            got = await frames_until(live, 30)
            assert [frame["id"] for frame in got] == list(range(1, 31))
            assert [frame["content"]["n"] for frame in got] == list(range(1, 31))
            assert rows_of(server, bob) == list(range(1, 31))
            await live.ack_to_device(10)
            assert rows_of(server, bob) == list(range(11, 31))
            await live.ack_to_device(30)
            assert rows_of(server, bob) == []
            # Acknowledging again, or past the end, is harmless.
            await live.ack_to_device(30)
            await live.ack_to_device(1000)


async def test_retried_txn_queues_nothing_twice(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        alice2 = await login(http, alice.handle, "another device of alice")
        bob = await new_account(http)
        async with ChatClient(server.url, token=alice.token) as sender, \
                ChatClient(server.url, token=alice2.token) as sender2:
            messages = {bob.user_id: {bob.device_id: olm(1)}}
            assert await sender.send_to_device(messages, txn_id="same") == {"queued": 1}
            assert await sender.send_to_device(messages, txn_id="same") == {"queued": 1}
            assert rows_of(server, bob) == [1]
            # The txn_id is per sending device: another device's "same" is its own.
            assert await sender2.send_to_device(messages, txn_id="same") == {"queued": 1}
            assert rows_of(server, bob) == [1, 2]


async def test_queue_caps_refuse_clearly_until_acknowledged(
        start_server: ServerFactory) -> None:
    server = await start_server(to_device={"max_messages": 3, "max_bytes": 4096,
                                           "max_message_bytes": 2048})
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        async with ChatClient(server.url, token=alice.token) as sender:
            for n in range(3):
                await sender.send_to_device({bob.user_id: {bob.device_id: olm(n)}})
            try:
                await sender.send_to_device({bob.user_id: {bob.device_id: olm(4)}})
                raise AssertionError("a full queue took a message")
            except ApiError as refused:
                assert (refused.status, refused.code) == (409, "to_device_queue_full")
                assert bob.device_id in refused.message
            async with ChatClient(server.url, token=bob.token) as receiver, \
                    receiver.connect() as live:
                await frames_until(live, 3)
                await live.ack_to_device(3)
            await sender.send_to_device({bob.user_id: {bob.device_id: olm(5)}})
            # The byte cap: two messages of ~1.9 KB fit in 4096 bytes, the third does not.
            big = {"type": "chatd.olm", "content": {"c": "x" * 1900}}
            await sender.send_to_device({bob.user_id: {bob.device_id: big}})
            try:
                await sender.send_to_device({bob.user_id: {bob.device_id: big}})
                await sender.send_to_device({bob.user_id: {bob.device_id: big}})
                raise AssertionError("a queue past max_bytes took a message")
            except ApiError as refused:
                assert (refused.status, refused.code) == (409, "to_device_queue_full")
            # One message past max_message_bytes is a 400 of its own.
            huge = {"type": "chatd.olm", "content": {"c": "x" * 3000}}
            try:
                await sender.send_to_device({bob.user_id: {bob.device_id: huge}})
                raise AssertionError("an oversized message was taken")
            except ApiError as refused:
                assert (refused.status, refused.code) == (400, "message_too_large")


async def test_rate_limited_per_target_device(start_server: ServerFactory) -> None:
    server = await start_server(ratelimits={"to_device_per_account": "3/1h burst 3",
                                            "login_per_account": "off",
                                            "login_per_address": "off",
                                            "register_per_address": "off"})
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        for n in range(3):
            await login(http, bob.handle, f"device {n}")
        async with ChatClient(server.url, token=alice.token) as sender:
            # Four devices behind "*": charged as found (into debt), so the next is refused.
            assert await sender.send_to_device({bob.user_id: {"*": olm(1)}}) == {"queued": 4}
            try:
                await sender.send_to_device({bob.user_id: {bob.device_id: olm(2)}})
                raise AssertionError("the to_device bucket did not refuse")
            except ApiError as refused:
                assert refused.status == 429 and refused.retry_after


async def test_revoked_device_loses_its_queue(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        bob_old = await login(http, bob.handle, "old phone")
        async with ChatClient(server.url, token=alice.token) as sender:
            await sender.send_to_device({bob.user_id: {"*": olm(1)}})
        assert rows_of(server, bob_old) == [1]
        response = await bob.delete(f"/devices/{bob_old.device_id}")
        assert response.status_code == 204, response.text
        with trio.fail_after(5):
            while rows_of(server, bob_old):  # noqa: ASYNC110  # the drop is a command of its own
                await trio.sleep(0.05)
        assert server.services.store.get(
            records.TO_DEVICE_HEADS, (int(bob.user_id), int(bob_old.device_id))) is None
        assert rows_of(server, bob) == [1]


async def test_bad_input_is_refused(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        carol = await new_account(http)
        device = {bob.user_id: {bob.device_id: olm(1)}}
        cases: list[tuple[Any, int, str]] = [
            ({"messages": device}, 400, "missing_field"),
            ({"txn_id": "t", "messages": []}, 400, "invalid_field"),
            ({"txn_id": "t", "messages": {"bob": {}}}, 400, "bad_request"),
            ({"txn_id": "t", "messages": {bob.user_id: {"x": olm(1)}}}, 400, "bad_request"),
            ({"txn_id": "t", "messages": {bob.user_id: {bob.device_id: {"type": "x"}}}},
             400, "invalid_field"),
            ({"txn_id": "t", "messages": {bob.user_id: {bob.device_id: {
                "type": "x", "content": "not an object"}}}}, 400, "invalid_field"),
            ({"txn_id": "t", "messages": {bob.user_id: {bob.device_id: {
                "type": "", "content": {}}}}}, 400, "invalid_field"),
            ({"txn_id": "no spaces", "messages": device}, 400, "bad_request"),
            # Numbers no stored value holds, and nesting past CONTENT_DEPTH.
            ({"txn_id": "t", "messages": {bob.user_id: {bob.device_id: {
                "type": "x", "content": {"n": 1 << 64}}}}}, 400, "invalid_field"),
            ({"txn_id": "t", "messages": {bob.user_id: {bob.device_id: {
                "type": "x", "content": {"a": [[[[[1]]]]]}}}}}, 400, "invalid_field"),
        ]
        for body, status, code in cases:
            assert_error(await alice.post("/to_device", body), status, code)
        assert_error(await http.post("/to_device", json={"txn_id": "t", "messages": device}),
                     401)
        response = await http.post("/to_device", content=b"{not json",
                                   headers={**alice.headers,
                                            "content-type": "application/json"})
        assert response.status_code == 400
        # Unknown users and devices (and another user's device id) are skipped.
        unknown = {"999999999999": {"*": olm(1)},
                   bob.user_id: {carol.device_id: olm(1), "123456789": olm(1)}}
        response = await alice.post("/to_device", {"txn_id": "u", "messages": unknown})
        assert response.status_code == 200 and response.json() == {"queued": 0}
        assert rows_of(server, bob) == [] and rows_of(server, carol) == []
        # A to_device_ack frame with a bad up_to gets an error frame.
        async with ChatClient(server.url, token=bob.token) as receiver, \
                receiver.connect() as live:
            for bad in (-1, "3", None, 1 << 64):
                await live.send_frame({"type": "to_device_ack", "up_to": bad, "req": "x"})
                error = await live.next_event()
                assert error["type"] == "error", error
            try:
                await live._call({"type": "to_device_ack", "up_to": -5})
                raise AssertionError("a negative up_to was taken")
            except ApiError as refused:
                assert refused.code == "invalid_field"


async def test_one_sender_cannot_fill_a_queue_for_everyone(
        start_server: ServerFactory) -> None:
    """A stranger sends to bob until its share is used up: it is refused, naming it,
    while another sender (here carol, and a sealed sender) still gets in."""
    server = await start_server(to_device={"max_messages": 10, "max_messages_per_sender": 3})
    async with httpx.AsyncClient(base_url=server.url) as http:
        stranger = await new_account(http)
        carol = await new_account(http)
        bob = await new_account(http)
        async with ChatClient(server.url, token=stranger.token) as flooder, \
                ChatClient(server.url, token=carol.token) as friend:
            for n in range(3):
                await flooder.send_to_device({bob.user_id: {"*": olm(n)}})
            try:
                await flooder.send_to_device({bob.user_id: {bob.device_id: olm(3)}})
                raise AssertionError("a sender past its share got in")
            except ApiError as refused:
                assert (refused.status, refused.code) == (409, "to_device_sender_share_full")
                assert stranger.user_id in refused.message
                assert bob.device_id in refused.message
            assert await friend.send_to_device(
                {bob.user_id: {bob.device_id: olm(4)}}) == {"queued": 1}
            assert rows_of(server, bob) == [1, 2, 3, 4]
            async with ChatClient(server.url, token=bob.token) as receiver, \
                    receiver.connect() as live:
                frames = await frames_until(live, 4)
                assert [frame["sender_user_id"] for frame in frames] == \
                    [stranger.user_id] * 3 + [carol.user_id]
                await live.ack_to_device(2)
            # Acknowledged entries free the sender's share again.
            await trio.sleep(0.2)
            assert rows_of(server, bob) == [3, 4]
            await flooder.send_to_device({bob.user_id: {bob.device_id: olm(5)}})


async def test_queued_messages_expire(start_server: ServerFactory) -> None:
    """Past `to_device.ttl` a queued message is never delivered, and the next send to
    that queue deletes it (and it no longer counts against the caps)."""
    clock = ManualClock()
    server = await start_server(clock=clock, to_device={"ttl": 60.0,
                                                        "max_messages_per_sender": 2})
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        async with ChatClient(server.url, token=alice.token) as sender:
            await sender.send_to_device({bob.user_id: {bob.device_id: olm(1)}})
            await sender.send_to_device({bob.user_id: {bob.device_id: olm(2)}})
            clock.now += 61_000
            # Expired entries hold no share: this one gets in, and they are swept.
            await sender.send_to_device({bob.user_id: {bob.device_id: olm(3)}})
            assert rows_of(server, bob) == [3]
            clock.now += 30_000
            await sender.send_to_device({bob.user_id: {bob.device_id: olm(4)}})
            clock.now += 31_000  # olm(3) is past the TTL, olm(4) is not
            async with ChatClient(server.url, token=bob.token) as receiver, \
                    receiver.connect() as live:
                [frame] = await frames_until(live, 1)
                assert (frame["id"], frame["content"]) == (4, olm(4)["content"])
                await no_to_device(live)
