from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel

from chatd.client import ApiError, ChatClient, LiveConnection
from chatd.protocol import frames
from chatd.server import RunningServer
from chatd.wsclient import ClientSocket, WebSocketClosed
from tests.conftest import ServerFactory
from tests.helpers import PASSWORD, UNLIMITED_SENDS, fresh_handle


@asynccontextmanager
async def user(server: RunningServer, handle: str | None = None,
               device: str = "test") -> AsyncIterator[ChatClient]:
    handle = handle or fresh_handle()
    async with ChatClient(server.url) as client:
        try:
            await client.register(handle, PASSWORD, handle.title())
        except ApiError as exc:
            assert exc.code == "handle_taken"
        await client.login(handle, PASSWORD, device)
        yield client


async def next_of(live: LiveConnection, kind: str) -> dict[str, Any]:
    with trio.fail_after(5):
        while True:
            event = await live.next_event()
            if event["type"] == kind:
                return event


async def messages(live: LiveConnection, count: int) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    with trio.fail_after(30):
        while len(result) < count:
            event = await live.next_event()
            if event["type"] == "message":
                result.append(event["message"])
    return result


async def nothing_more(live: LiveConnection, kind: str = "message", wait: float = 0.3) -> None:
    with trio.move_on_after(wait):
        while True:
            event = await live.next_event()
            assert event["type"] != kind, event


def uid(client: ChatClient) -> str:
    assert client.credentials is not None
    return client.credentials.user_id


async def direct(alice: ChatClient, bob: ChatClient) -> dict[str, Any]:
    """Alice's direct chat with Bob, its message request accepted by Bob: they are
    contacts, so receipts and presence flow (docs/privacy.md)."""
    conv = await alice.open_direct(uid(bob))
    if conv.get("request") == "sent":
        conv = await bob.accept_request(conv["conversation_id"])
    return conv


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_live_direct_delivery_to_every_device(server: RunningServer, codec: str) -> None:
    handle = fresh_handle()
    async with user(server, handle) as alice, user(server) as bob:
        conv = (await direct(alice, bob))["conversation_id"]
        async with alice.connect(codec) as a, bob.connect(codec) as b, \
                user(server, handle, device="tablet") as alice_tablet, \
                alice_tablet.connect(codec) as a2:  # type: ignore[arg-type]
            sent = await a.send(conv, "hello bob")
            assert sent["type"] == "sent" and sent["seq"] == 1
            [got] = await messages(b, 1)
            assert got["body"] == "hello bob" and got["seq"] == 1
            assert got["sender_id"] == uid(alice) and got["message_id"] == sent["message_id"]
            # The sender's other devices get it; the sending device has the `sent` answer.
            [copy] = await messages(a2, 1)
            assert copy["message_id"] == sent["message_id"]
            await nothing_more(a)
            # REST and WS sends are the same path.
            await bob.send(conv, "via rest")
            assert [m["seq"] for m in await messages(a, 1)] == [2]


async def test_group_fanout_in_order_under_concurrent_senders(server: RunningServer) -> None:
    async with user(server) as admin:
        clients = [ChatClient(server.url) for _ in range(6)]
        try:
            for client in clients:
                handle = fresh_handle()
                await client.register(handle, PASSWORD, handle)
                await client.login(handle, PASSWORD)
            group = (await admin.create_group("g", [uid(c) for c in clients]))["conversation_id"]
            async with admin.connect() as watcher:
                views: list[list[dict[str, Any]]] = []
                async with trio.open_nursery() as nursery:
                    async def run(client: ChatClient) -> None:
                        async with client.connect() as live:
                            own = []
                            for n in range(20):
                                sent = await live.send(group, f"{uid(client)}:{n}")
                                own.append({"seq": sent["seq"], "body": f"{uid(client)}:{n}",
                                            "sender_id": uid(client)})
                            others = await messages(live, 1 + 5 * 20)
                            await nothing_more(live)
                            views.append(sorted(
                                [{key: m[key] for key in ("seq", "body", "sender_id")}
                                 for m in others] + own, key=lambda m: m["seq"]))
                    for client in clients:
                        nursery.start_soon(run, client)
                views.append([{key: m[key] for key in ("seq", "body", "sender_id")}
                              for m in await messages(watcher, 1 + 6 * 20)])
        finally:
            for client in clients:
                await client.aclose()
    # Every device saw the same log (its own sends through their `sent` answers): seq 1
    # (group_created) to the last, no gap, no duplicate, each sender's in the order sent.
    for view in views:
        assert [m["seq"] for m in view] == list(range(1, 2 + 6 * 20))
        assert view == views[0]
    for client in clients:
        own = [m["body"] for m in views[0] if m["sender_id"] == uid(client)]
        assert own == [f"{uid(client)}:{n}" for n in range(20)]


async def test_offline_catch_up_then_live_without_gap_or_duplicate(
        start_server: ServerFactory) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)  # 350 sends back to back
    async with user(server) as alice, user(server) as bob:
        conv = (await direct(alice, bob))["conversation_id"]
        async with bob.connect() as b:
            await alice.send(conv, "m1")
            [m1] = await messages(b, 1)
            await b.ack(conv, m1["seq"])
        for n in range(2, 302):
            await alice.send(conv, f"m{n}")

        async def keep_sending() -> None:
            for n in range(302, 352):
                await alice.send(conv, f"m{n}")
                await trio.lowlevel.checkpoint()

        async with bob.connect() as b, trio.open_nursery() as nursery:
            nursery.start_soon(keep_sending)
            got = await messages(b, 350)
            assert [m["body"] for m in got] == [f"m{n}" for n in range(2, 352)]
            await nothing_more(b)
            await b.ack(conv, got[-1]["seq"])
        async with bob.connect() as b:
            await nothing_more(b)  # everything was acknowledged


async def test_a_new_device_gets_what_came_after_it_and_sync_overrides(
        server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob:
        conv = (await direct(alice, bob))["conversation_id"]
        await alice.send(conv, "before the device")
        await bob.login((await bob.request("GET", "/me"))["handle"], PASSWORD, "new phone")
        await alice.send(conv, "after the device")
        async with bob.connect() as b:
            [only] = await messages(b, 1)
            assert only["body"] == "after the device"
            await nothing_more(b)
            await b.sync({conv: 0})  # a reinstalled app asks for everything
            got = await messages(b, 2)
            assert [m["body"] for m in got] == ["before the device", "after the device"]


async def test_receipts_reach_the_sender(server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob:
        conv = (await direct(alice, bob))["conversation_id"]
        async with alice.connect() as a, bob.connect() as b:
            sent = await a.send(conv, "did you get this?")
            [m] = await messages(b, 1)
            await b.ack(conv, m["seq"])
            receipt = await next_of(a, "receipt")
            assert receipt == {"type": "receipt", "conversation_id": conv, "user_id": uid(bob),
                               "delivered_seq": 1, "read_seq": 0}
            await b.read(conv, m["seq"])
            receipt = await next_of(a, "receipt")
            assert (receipt["delivered_seq"], receipt["read_seq"]) == (1, 1)
        status = await alice.request("GET", f"/messages/{conv}/{sent['seq']}/status")
        assert {m["user_id"]: (m["delivered"], m["read"]) for m in status["members"]} == {
            uid(alice): (True, True), uid(bob): (True, True)}
        listing = await bob.conversations()
        assert listing[0]["unread"] == 0


async def test_presence_and_typing_reach_peers_not_strangers(server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob, user(server) as stranger:
        conv = (await direct(alice, bob))["conversation_id"]
        async with alice.connect() as a, stranger.connect() as s:
            async with bob.connect() as b:
                online = await next_of(a, "presence")
                assert (online["user_id"], online["online"]) == (uid(bob), True)
                seen_by_bob = await next_of(b, "presence")  # alice was already online
                assert seen_by_bob["user_id"] == uid(alice)
                await b.typing(conv)
                typing = await next_of(a, "typing")
                assert typing == {"type": "typing", "conversation_id": conv,
                                  "user_id": uid(bob)}
                with pytest.raises(ApiError) as refused:
                    await s.typing(conv)
                assert refused.value.code == "unknown_conversation"
            offline = await next_of(a, "presence")
            assert (offline["online"], type(offline["last_seen"])) == (False, int)
            await nothing_more(s, "presence")
            await nothing_more(s, "typing")
        # With last_seen hidden, peers see offline without a time.
        await bob.request("PATCH", "/me", {"hide_last_seen": True})
        async with alice.connect() as a:
            async with bob.connect():
                await next_of(a, "presence")
            offline = await next_of(a, "presence")
            assert (offline["online"], offline["last_seen"]) == (False, None)


async def test_bad_frames_get_error_frames_and_the_connection_survives(
        server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob, user(server) as carol:
        conv = (await direct(alice, bob))["conversation_id"]
        foreign = (await direct(bob, carol))["conversation_id"]
        async with alice.connect() as a, bob.connect() as b:
            bad: list[Any] = [
                "{not json", "[]", '{"type": "launch"}', '{"no": "type"}',
                '{"type": "send", "conversation_id": "1", "client_msg_id": "x",'
                ' "content_type": "text/plain", "body": "x"}',  # no req
                '{"type": "ack", "conversation_id": "abc", "seq": 1}',
                '{"type": "ack", "conversation_id": "1", "seq": -5}',
                '{"type": "read", "conversation_id": "1", "seq": "one"}',
                '{"type": "ping", "req": ' + '"' + "r" * 100 + '"}',
                b"\x81\xa4type\xa4ping",  # msgpack on a JSON connection
                "x" * 200_000,
            ]
            for frame in bad:
                await a.socket.send(frame)
                error = await next_of(a, "error")
                assert error["code"] and error["message"]
            for call in (a.send(foreign, "intrude"), a.send("123", "nowhere"),
                         a.ack(foreign, 1), a.read(conv, 99), a.typing(foreign)):
                with pytest.raises(ApiError):
                    await call
            sent = await a.send(conv, "still works")
            assert sent["seq"] == 1
            [m] = await messages(b, 1)
            assert m["body"] == "still works"


async def test_bad_tokens_are_closed_with_4001(server: RunningServer) -> None:
    ws_url = server.url.replace("http", "ws", 1) + "/ws"
    for query in ("", "?token=chatd_forged"):
        socket = await ClientSocket.connect(ws_url + query, subprotocols=["chatd.json"])
        with pytest.raises(WebSocketClosed) as closed:
            await socket.receive()
        assert closed.value.code == 4001


async def test_an_upgrade_request_with_a_body_does_not_hurt_the_server(
        server: RunningServer) -> None:
    # hypercorn 0.18 died on data after an HTTP rejection of an upgrade; chatd must not,
    # whether chatd's transport (/ws) or hypercorn (any other path) gets the request.
    async with httpx.AsyncClient(base_url=server.url) as http:
        for target in ("/ws", "/ws?token=chatd_forged", "/elsewhere", "/healthz"):
            with contextlib.suppress(httpx.TransportError):
                await http.request("GET", target, content=b"surprise", headers={
                    "Connection": "Upgrade", "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert (await http.get("/healthz")).status_code == 200


async def test_a_revoked_device_is_disconnected(server: RunningServer) -> None:
    async with user(server) as alice, alice.connect() as a:
        await alice.request("DELETE", f"/devices/{alice.credentials.device_id}")  # type: ignore[union-attr]
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            while True:
                await a.next_event()
        assert a.close_code == 4001


async def test_abrupt_disconnect_mid_send_loses_nothing_acknowledged(
        server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob:
        conv = (await direct(alice, bob))["conversation_id"]
        ws_url = server.url.replace("http", "ws", 1) + f"/ws?token={alice.token}"
        socket = await ClientSocket.connect(ws_url, subprotocols=["chatd.json"])
        for n in range(50):
            await socket.send(json.dumps(frames.send_request(f"r{n}", conv, f"burst-{n}",
                                                             f"b{n}")))
        await socket.stream.aclose()  # the TCP connection just goes away, no close frame
        history = await bob.history(conv, after=0, limit=200)
        seqs = [m["seq"] for m in history["messages"]]
        assert seqs == list(range(1, len(seqs) + 1))
        async with alice.connect() as a:  # and the server still serves
            assert (await a.send(conv, "back"))["seq"] == len(seqs) + 1


async def test_idle_connections_are_reaped(start_server: ServerFactory) -> None:
    running = await start_server(websocket={"idle_timeout": 0.5})
    async with user(running) as alice, alice.connect() as a:
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            while True:
                await a.next_event()
        assert a.close_code == 4000


async def _flood(alice: ChatClient, conv: str, count: int) -> None:
    """~16 KB a message: far more than loopback socket buffers hold for a stalled reader."""
    async with alice.connect() as a:
        for n in range(count):
            await a.send(conv, f"{n:04d}" + "x" * 16_000)


@asynccontextmanager
async def flooded_stalled_reader(running: RunningServer, sender: ChatClient,
                                 reader: ChatClient) -> AsyncIterator[tuple[Any, str]]:
    """`reader` holds a socket that reads nothing (a `ClientSocket` reads only when asked)
    while `sender` writes 400 messages of ~16 KB to it."""
    conv = (await direct(sender, reader))["conversation_id"]
    ws_url = running.url.replace("http", "ws", 1) + f"/ws?token={reader.token}"
    stalled = await ClientSocket.connect(ws_url, subprotocols=["chatd.json"])
    try:
        await _flood(sender, conv, 400)
        yield stalled, conv
    finally:
        await stalled.stream.aclose()


async def test_a_slow_consumer_is_cut_off_with_4008_and_catches_up_completely(
        start_server: ServerFactory) -> None:
    running = await start_server(websocket={"max_queue": 8}, ratelimits=UNLIMITED_SENDS)
    async with user(running) as alice, user(running) as bob:
        async with flooded_stalled_reader(running, alice, bob) as (slow, _):
            # Reading again lets the server finish its write and send the close frame.
            with trio.fail_after(10), pytest.raises(WebSocketClosed) as closed:
                while True:
                    await slow.receive()
            assert closed.value.code == 4008
        async with bob.connect() as b:
            got = await messages(b, 400)
        assert [m["seq"] for m in got] == list(range(1, 401))
        assert [m["body"][:4] for m in got] == [f"{n:04d}" for n in range(400)]


async def test_a_client_that_reads_nothing_is_aborted_and_pins_nothing(
        start_server: ServerFactory) -> None:
    running = await start_server(server={"send_timeout": 0.5}, ratelimits=UNLIMITED_SENDS)
    async with user(running) as alice, user(running) as bob, \
            flooded_stalled_reader(running, alice, bob):
        with trio.fail_after(10):
            while running.services.hub.sessions_of(int(uid(bob))):  # noqa: ASYNC110
                await trio.sleep(0.05)
    # The test's teardown then shuts the server down, which a pinned write would block.


async def test_json_and_msgpack_devices_of_one_user_see_the_same_events(
        server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob:
        conv = (await direct(alice, bob))["conversation_id"]
        async with ChatClient(server.url) as bob_phone:
            await bob_phone.login((await bob.request("GET", "/me"))["handle"], PASSWORD, "phone")
            async with bob.connect("json") as laptop, bob_phone.connect("msgpack") as phone, \
                    alice.connect() as a:
                await a.send(conv, "to both of your devices")
                await alice.request("PATCH", "/me", {"display_name": "Alice Renamed"})
                seen = []
                for live in (laptop, phone):
                    [message] = await messages(live, 1)
                    profile = await next_of(live, "profile")
                    seen.append((message, profile))
                assert seen[0] == seen[1]
                assert seen[0][0]["body"] == "to both of your devices"
                assert seen[0][1]["user"]["display_name"] == "Alice Renamed"


async def test_typing_is_rate_limited(server: RunningServer) -> None:
    async with user(server) as alice, user(server) as bob:
        conv = (await direct(alice, bob))["conversation_id"]
        async with alice.connect() as a, bob.connect() as b:
            for _ in range(6):
                await a.typing(conv)
            await a.ping()  # everything above has been handled once the pong is back
            relayed = 0
            with trio.move_on_after(0.5):
                while True:
                    if (await b.next_event())["type"] == "typing":
                        relayed += 1
            assert relayed == 3  # a burst of 3, then one per 2 s
