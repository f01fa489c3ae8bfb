"""Hostile input on /ws ends, at most, the connection that sent it.

Each test here reproduces one defect found by an audit (each failed on the code before
the fix): a frame or a socket's behaviour that ended the whole process, stalled the loop,
or silenced a conversation. The bystander checks are what containment means: the shard
still answers, and another user's connection still works.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import msgpack
import pytest
import trio

from chatd.client import ChatClient
from chatd.protocol import websocket as ws
from chatd.protocol.frames import OutFrame
from chatd.server import RunningServer
from chatd.web.sockets import Connection
from tests.conftest import ServerFactory
from tests.helpers import Account, new_account
from tests.rawws import Closed, RawWebSocket
from tests.web.test_ws import messages, uid, user


@asynccontextmanager
async def pair(server: RunningServer) -> AsyncIterator[tuple[Account, Account, str]]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        yield alice, bob, await alice.direct_with(bob)


async def assert_bystanders_fine(server: RunningServer) -> None:
    """The shard serves REST, and two other users still chat live over /ws."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200
    async with user(server) as carol, user(server) as dave:
        conv = (await carol.open_direct(uid(dave)))["conversation_id"]
        async with carol.connect() as c, dave.connect("msgpack") as d:
            await c.send(conv, "still here")
            [got] = await messages(d, 1)
            assert got["body"] == "still here"


def connection_of(server: RunningServer, user_id: str) -> Connection:
    """The server's side of a user's one connection (for fault injection)."""
    [live] = server.services.hub.sessions_of(int(user_id))
    conn = live.on_ready.__self__  # type: ignore[attr-defined]
    assert isinstance(conn, Connection)
    return conn


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_a_lone_surrogate_is_refused_at_the_edge(server: RunningServer,
                                                        codec: str) -> None:
    async with pair(server) as (alice, _bob, conv):
        raw = await RawWebSocket.connect(server.url, alice.token, codec=codec)
        with trio.fail_after(5):
            if codec == "json":
                # Echoed in the reply, this req ended the process inside the flusher.
                await raw.send_text('{"type":"ping","req":"\\ud800"}')
                refused = await raw.next_frame("error")
                assert refused["code"] == "invalid_text" and "req" not in refused
                await raw.send_text('{"type":"send","req":"s1","conversation_id":"' + conv +
                                    '","client_msg_id":"c1","content_type":"text/plain",'
                                    '"body":"a\\udfffb"}')
                refused = await raw.next_frame("error")
                assert refused["code"] == "invalid_text" and "body" in refused["message"]
            else:
                # msgpack strings are strict UTF-8: an encoded surrogate is malformed.
                await raw.send_frame(ws.OP_BINARY, b"\x82\xa4type\xa4ping\xa3req\xa3\xed\xa0\x80")
                assert (await raw.next_frame("error"))["code"] == "malformed_frame"
            await raw.send({"type": "ping", "req": "after"})
            assert (await raw.next_frame("pong"))["req"] == "after"
        raw.close()
    await assert_bystanders_fine(server)


async def test_unauthenticated_flood_then_close_does_not_end_the_shard(
        server: RunningServer) -> None:
    """No token; reads nothing; megabytes of pings, then a burst and a close in one write.
    When the burst's pongs overflowed the socket buffer, a drain task was scheduled; the
    close ended the connection and closed the socket before the drain ran, and the
    drain's ValueError ended the process."""
    ping = ws.encode_frame(ws.OP_PING, b"p" * 125, mask=True)
    for megabytes in (1, 2, 3, 4, 6):
        raw = await RawWebSocket.connect(server.url, None)
        with trio.move_on_after(2), contextlib.suppress(OSError):
            await raw.send_all(ping * (megabytes * 1_000_000 // len(ping)))
            await raw.send_all(ping * 400 + ws.encode_close(1000, mask=True))
        raw.close()
        await trio.sleep(0.1)
    await assert_bystanders_fine(server)


@pytest.mark.parametrize("kind", ["control", "frame"])
async def test_a_client_that_never_reads_is_not_read_from(start_server: ServerFactory,
                                                          kind: str) -> None:
    """A pinger that reads nothing: the server stops reading from it once its replies
    back up, so its cost stays bounded (the replies used to grow by copying, quadratic
    in what was sent, with the loop at 100%), and it is cut off after send_timeout."""
    server = await start_server(server={"send_timeout": 2.0})
    async with pair(server) as (alice, _bob, _conv):
        raw = await RawWebSocket.connect(server.url, alice.token, receive_buffer=4096)
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65_536)
        if kind == "control":
            ping = ws.encode_frame(ws.OP_PING, b"p" * 125, mask=True)
        else:
            ping = ws.encode_frame(ws.OP_TEXT, b'{"type":"ping","req":"%s"}' % (b"r" * 60),
                                   mask=True)
        chunk = ping * 500
        conn = connection_of(server, alice.user_id)
        most_buffered, slowest = 0, 0.0
        sent = 0

        async def watch(http: httpx.AsyncClient) -> None:
            nonlocal most_buffered, slowest
            while True:
                most_buffered = max(most_buffered, len(conn.unsent or b""))
                started = trio.current_time()
                assert (await http.get("/healthz")).status_code == 200
                slowest = max(slowest, trio.current_time() - started)
                await trio.sleep(0.01)

        async with httpx.AsyncClient(base_url=server.url) as http, \
                trio.open_nursery() as watching:
            watching.start_soon(watch, http)
            with trio.fail_after(20):
                # Sends until the server stops taking bytes for a second, or hangs up.
                while True:
                    with trio.move_on_after(1) as blocked:
                        try:
                            await raw.send_all(chunk)
                        except OSError:
                            break
                    if blocked.cancelled_caught:
                        break
                    sent += len(chunk)
            watching.cancel_scope.cancel()
        # What got through is what the kernel buffers hold, not an endless stream; what
        # the server holds for it stays small; and the loop kept serving others.
        assert sent < 32 * 1024 * 1024, sent
        assert most_buffered < 1024 * 1024, most_buffered
        assert slowest < 1.0, slowest
        await trio.sleep(3)  # still reading nothing, past send_timeout
        with trio.fail_after(10):
            try:
                closed = await raw.closed()
            except ConnectionResetError:
                closed = Closed(None)
        assert closed.code in (None, 4008)  # aborted, or cut off as too slow
        raw.close()
    await assert_bystanders_fine(server)


async def test_a_frame_that_cannot_be_encoded_closes_only_its_connection(
        server: RunningServer) -> None:
    async with pair(server) as (alice, bob, conv):
        poisoned = await RawWebSocket.connect(server.url, alice.token)
        async with ChatClient(server.url, token=bob.token) as bob_client, \
                bob_client.connect() as b:
            await b.ping()
            [live] = server.services.hub.sessions_of(int(alice.user_id))
            live.push(OutFrame({"type": "broken", "value": object()}))  # encoding raises
            with trio.fail_after(5):
                closed = await poisoned.closed()
            assert closed.code == ws.CLOSE_INTERNAL_ERROR
            assert (await alice.send(conv, "the flusher lives")).status_code == 201
            [got] = await messages(b, 1)
            assert got["body"] == "the flusher lives"
        poisoned.close()


async def test_a_drain_whose_socket_closed_before_it_ran_is_contained(
        server: RunningServer) -> None:
    async with pair(server) as (alice, _bob, _conv):
        raw = await RawWebSocket.connect(server.url, alice.token)
        await raw.send({"type": "ping", "req": "up"})
        await raw.next_frame("pong")
        conn = connection_of(server, alice.user_id)
        # A drain is scheduled, and the socket is closed before the drain task runs.
        conn.unsent = bytearray(b"x")
        conn.sockets.start_drain(conn)
        trio.lowlevel.notify_closing(conn.sock)
        conn.sock.close()
        await trio.sleep(0.2)
        raw.close()
    await assert_bystanders_fine(server)


async def test_nesting_and_bad_keys_get_error_frames_and_the_connection_lives(
        server: RunningServer) -> None:
    async with pair(server) as (alice, _bob, _conv):
        text = await RawWebSocket.connect(server.url, alice.token)
        binary = await RawWebSocket.connect(server.url, alice.token, codec="msgpack")
        with trio.fail_after(5):
            for depth in (20, 5_000, 60_000):
                await text.send_text('{"type":"ping","req":"r","x":' + "[" * depth +
                                     "]" * depth + "}")
                assert (await text.next_frame("error"))["code"] == "nesting_too_deep"
                await binary.send_frame(ws.OP_BINARY, b"\x91" * depth + b"\x00")
                assert (await binary.next_frame("error"))["code"] == "nesting_too_deep"
            # A map whose key is an array (unhashable once decoded).
            await binary.send_frame(ws.OP_BINARY, b"\x82\xa4type\xa4ping\x91\x01\x02")
            assert (await binary.next_frame("error"))["code"] == "malformed_frame"
            await binary.send_frame(ws.OP_BINARY, msgpack.packb({"type": "ping", "req": "ok"}))
            assert (await binary.next_frame("pong"))["req"] == "ok"
            await text.send({"type": "ping", "req": "ok"})
            assert (await text.next_frame("pong"))["req"] == "ok"
        text.close()
        binary.close()


async def test_endless_empty_continuation_frames_close_the_connection(
        server: RunningServer) -> None:
    async with pair(server) as (alice, _bob, _conv):
        raw = await RawWebSocket.connect(server.url, alice.token)
        await raw.send_frame(ws.OP_TEXT, b'{"type":', final=False)
        with trio.move_on_after(3), contextlib.suppress(OSError):  # hung up on: fine
            for _ in range(10_000):
                await raw.send_frame(ws.OP_CONTINUATION, b"", final=False)
        with trio.fail_after(5):
            assert (await raw.closed()).code == ws.CLOSE_POLICY_VIOLATION
        raw.close()
    await assert_bystanders_fine(server)


async def test_a_slow_steady_reader_catches_up_in_bounded_messages(
        start_server: ServerFactory) -> None:
    """Catch-up used to be one ~4 MB message under a total write deadline, so a device
    on a slow link never caught up. Now messages are ~256 KiB and the deadline is on
    progress: a reader slower than send_timeout per megabyte still gets everything."""
    server = await start_server(server={"send_timeout": 1.0})
    async with pair(server) as (alice, bob, conv):
        body = "x" * 60_000
        for n in range(48):
            assert (await alice.send(conv, f"{n:02d}{body}")).status_code == 201
        raw = await RawWebSocket.connect(server.url, bob.token, receive_buffer=16_384)
        got: list[str] = []
        with trio.fail_after(30):
            while len(got) < 48:
                await trio.sleep(0.05)  # ~16 KB per 50 ms: about 3 s for the 2.9 MB
                got.extend(f["message"]["body"][:2] for f in await raw.next_frames()
                           if f["type"] == "message")  # type: ignore[union-attr]
        assert got == [f"{n:02d}" for n in range(48)]
        assert max(raw.message_sizes) < 256 * 1024 + 64 * 1024, raw.message_sizes
        raw.close()


async def test_a_socket_is_closed_when_its_token_expires(start_server: ServerFactory) -> None:
    server = await start_server(auth={"token_ttl_days": 3 / 86_400},
                                websocket={"idle_timeout": 2.0})
    async with pair(server) as (alice, _bob, _conv):
        raw = await RawWebSocket.connect(server.url, alice.token)
        with trio.fail_after(10):
            while True:
                await raw.send({"type": "ping"})  # never idle: only the expiry can end it
                with trio.move_on_after(0.3):
                    got = await raw.next_frames()
                    if isinstance(got, Closed):
                        break
        assert got.code == 4001 and "expired" in got.reason
        raw.close()


async def test_sync_past_the_head_or_of_a_foreign_conversation_is_refused(
        server: RunningServer) -> None:
    async with pair(server) as (alice, bob, conv):
        if True:
            mallory = await new_account(alice.http)
            await alice.send(conv, "one")
            raw = await RawWebSocket.connect(server.url, bob.token)
            assert (await raw.next_frame("message"))["message"]["seq"] == 1
            with trio.fail_after(5):
                await raw.send({"type": "sync", "req": "far", "cursors": {conv: 999}})
                refused = await raw.next_frame("error")
                assert (refused["req"], refused["code"]) == ("far", "seq_out_of_range")
                await raw.send({"type": "sync", "req": "neg", "cursors": {conv: -1}})
                assert (await raw.next_frame("error"))["req"] == "neg"
                other = await mallory.direct_with(alice)
                await raw.send({"type": "sync", "req": "foreign", "cursors": {other: 0}})
                refused = await raw.next_frame("error")
                assert (refused["req"], refused["code"]) == ("foreign", "unknown_conversation")
                # The conversation was not silenced: the next message still comes.
                await alice.send(conv, "two")
                assert (await raw.next_frame("message"))["message"]["seq"] == 2
            raw.close()


async def test_a_reading_client_is_not_cut_off_for_its_own_pipelined_requests(
        server: RunningServer) -> None:
    """3,000 pings in one write (more than websocket.max_queue answers) used to close a
    client that was reading all along with 4008: the answers outran the flusher."""
    async with pair(server) as (alice, _bob, _conv):
        raw = await RawWebSocket.connect(server.url, alice.token)
        pings = b"".join(ws.encode_frame(ws.OP_TEXT, b'{"type":"ping","req":"%d"}' % n,
                                         mask=True) for n in range(3_000))
        answered: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw.send_all, pings)
            with trio.fail_after(20):
                while len(answered) < 3_000:
                    answered.append((await raw.next_frame("pong"))["req"])
        assert answered == [str(n) for n in range(3_000)]
        raw.close()


async def test_connections_per_user_are_capped(start_server: ServerFactory) -> None:
    server = await start_server(websocket={"max_connections_per_user": 3})
    async with pair(server) as (alice, _bob, _conv):
        held = [await RawWebSocket.connect(server.url, alice.token) for _ in range(3)]
        for raw in held:
            await raw.send({"type": "ping", "req": "up"})
            await raw.next_frame("pong")
        extra = await RawWebSocket.connect(server.url, alice.token)
        with trio.fail_after(5):
            assert (await extra.closed()).code == 4029
        extra.close()
        held.pop().close()
        await trio.sleep(0.2)  # the server notices the hang-up
        again = await RawWebSocket.connect(server.url, alice.token)
        await again.send({"type": "ping", "req": "back"})
        assert (await again.next_frame("pong"))["req"] == "back"
        for raw in (*held, again):
            raw.close()


async def test_reads_are_bounded_per_connection_like_sends(start_server: ServerFactory) -> None:
    """Pipelined `read` frames each queued a durable command with no bound per connection:
    one connection could fill the shared commit queue and get other users' sends refused
    as overloaded. Now a connection has at most max_inflight_sends commands queued."""
    server = await start_server(websocket={"max_inflight_sends": 4})
    async with pair(server) as (alice, bob, conv):
        await alice.send(conv, "one")
        raw = await RawWebSocket.connect(server.url, bob.token)
        frame = ws.encode_frame(ws.OP_TEXT, b'{"type":"read","conversation_id":"%s","seq":1}'
                                % conv.encode(), mask=True)
        most_pending = 0

        async def watch() -> None:
            nonlocal most_pending
            while True:
                most_pending = max(most_pending,
                                   server.services.committer.statistics().pending)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            with trio.move_on_after(1), contextlib.suppress(OSError):
                while True:
                    await raw.send_all(frame * 2_000)
            nursery.cancel_scope.cancel()
        assert most_pending <= 4 + 2, most_pending  # its own bound, plus hint batches
        assert (await alice.send(conv, "not refused")).status_code == 201
        raw.close()


async def test_a_burst_of_typing_cannot_get_another_user_cut_off(
        start_server: ServerFactory) -> None:
    """400 groups with the victim, 3 typing notices each in one write: the victim's queue
    overflowed and it was closed with 4008 though it read. Typing is ephemeral now: a
    backlog drops it, and the attacker's reader yields every few dozen frames."""
    # 40 groups at once is past group_create's burst; this is about typing, not that.
    server = await start_server(websocket={"max_queue": 64},
                                ratelimits={"group_create_per_account": "off"})
    async with pair(server) as (mallory, victim, _conv):
        groups = [await mallory.group(f"g{n}", victim) for n in range(40)]
        watching = await RawWebSocket.connect(server.url, victim.token)
        attacker = await RawWebSocket.connect(server.url, mallory.token)
        burst = b"".join(ws.encode_frame(
            ws.OP_TEXT, b'{"type":"typing","conversation_id":"%s"}' % group.encode(),
            mask=True) for group in groups for _ in range(3))
        await attacker.send_all(burst)
        await attacker.send({"type": "ping", "req": "done"})
        await attacker.next_frame("pong")
        await watching.send({"type": "ping", "req": "alive"})
        with trio.fail_after(5):
            assert (await watching.next_frame("pong"))["req"] == "alive"
        attacker.close()
        watching.close()
