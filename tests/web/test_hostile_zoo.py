"""A zoo of hostile clients at once against one shard, and a bystander who must not notice.

The shard runs as its own process (`python -m chatd serve`, as in production), so what
the bystander measures is the server, not this test's own clients. At the same time:

- a non-reading pinger: an authenticated /ws connection that sends WebSocket pings and
  `{"type": "ping"}` frames in a loop and never reads a byte (a tiny receive buffer, so
  the server's answers back up at once);
- a fragment flood: a non-final text frame, then empty continuation frames without end;
- a slow reader: subscribed to a busy group with a long history (asked for from seq 0),
  reading a little every 100 ms; a spammer keeps that group busy;
- a handshake slowloris: connections that dribble an HTTP request head one byte at a
  time, to /ws and to a REST route.

Each hostile client reconnects whenever the server hangs up on it. Meanwhile a normal
user does round trips for several seconds: a message over the WebSocket until its `sent`
answer, and GET /me over REST. Their p95 must stay under 100 ms, and the server must be
alive and serving at the end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio

from chatd.client import ApiError, ChatClient, LiveConnection
from tests.helpers import (
    PASSWORD,
    UNLIMITED_SENDS_ENV,
    Account,
    ServerProcess,
    fresh_handle,
    new_account,
)

#: Seconds the hostile clients run before the bystander starts measuring.
WARMUP = 1.5
#: Seconds the bystander measures.
DURATION = 8.0
P95_LIMIT = 0.100
#: A round trip that takes longer than this counts as this long (and the run goes on).
ROUND_TRIP_TIMEOUT = 5.0
SLOWLORIS_CONNECTIONS = 40
HISTORY = 400  # messages in the slow reader's group before it connects
MASK = b"\x3c\xa5\x0f\x96"


OP_CONTINUATION, OP_TEXT, OP_PING = 0x0, 0x1, 0x9


def opening_request(host: str, target: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chatd.json\r\n\r\n").encode()


def raw_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame, final or not (RFC 6455 framing written out here)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head.append(0x80 | length)
    elif length < 65_536:
        head += struct.pack("!BH", 0x80 | 126, length)
    else:
        head += struct.pack("!BQ", 0x80 | 127, length)
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes(head) + MASK + masked


@dataclass
class Zoo:
    url: str
    counts: dict[str, int] = field(default_factory=dict)
    slowloris_longest: float = 0.0

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None
        return parts.hostname, parts.port

    async def connect(self, receive_buffer: int | None = None) -> trio.SocketStream:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if receive_buffer is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            await sock.connect(self.address)
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    async def open_ws(self, token: str, receive_buffer: int | None = None, *,
                      read_head: bool = True) -> tuple[trio.SocketStream, bytes]:
        stream = await self.connect(receive_buffer)
        try:
            host, port = self.address
            await stream.send_all(opening_request(f"{host}:{port}", f"/ws?token={token}"))
            if not read_head:
                return stream, b""
            data = b""
            with trio.fail_after(10):
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some()
                    assert chunk, data
                    data += chunk
            assert data.startswith(b"HTTP/1.1 101 "), data
        except BaseException:
            # A server that hangs up mid-handshake must not leave the socket to the GC.
            await trio.aclose_forcefully(stream)
            raise
        return stream, data[data.index(b"\r\n\r\n") + 4:]

    async def forever(self, name: str, attack: Callable[[], Awaitable[None]]) -> None:
        """Run `attack` again each time the server ends it."""
        while True:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                     OSError, ApiError):
                await attack()
            self.count(f"{name}: server hung up")
            await trio.sleep(0.05)

    # -- the hostile clients ---------------------------------------------------------------

    async def non_reading_pinger(self, token: str) -> None:
        stream, _ = await self.open_ws(token, receive_buffer=4096, read_head=False)
        burst = (raw_frame(OP_PING, b"p" * 125)
                 + raw_frame(OP_TEXT, b'{"type":"ping","req":"never-read"}')) * 200
        async with stream:
            while True:
                await stream.send_all(burst)
                self.count("pinger: frames sent", 400)

    async def fragment_flood(self, token: str) -> None:
        stream, _ = await self.open_ws(token)
        empty = raw_frame(OP_CONTINUATION, b"", fin=False) * 10_000
        async with stream:
            await stream.send_all(raw_frame(OP_TEXT, b'{"type":', fin=False))
            while True:
                await stream.send_all(empty)
                self.count("fragment flood: continuations sent", 10_000)

    async def slow_reader(self, token: str, conversation_id: str) -> None:
        stream, rest = await self.open_ws(token, receive_buffer=4096)
        async with stream:
            await stream.send_all(raw_frame(OP_TEXT, json.dumps(
                {"type": "sync", "cursors": {conversation_id: 0}}).encode()))
            self.count("slow reader: bytes read", len(rest))
            while True:
                await trio.sleep(0.1)
                data = await stream.receive_some(1024)
                if not data:
                    return
                self.count("slow reader: bytes read", len(data))

    async def spammer(self, live: LiveConnection, conversation_id: str) -> None:
        n = 0
        while True:
            await live.send(conversation_id, f"spam {n} " + "s" * 1000)
            n += 1
            self.count("spammer: messages")
            await trio.sleep(0.01)

    async def slowloris(self, head: bytes) -> None:
        stream = await self.connect()
        opened = trio.current_time()
        async with stream:
            try:
                for byte in head:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.1)
                self.count("slowloris: whole head sent")
                while await stream.receive_some():
                    pass
            finally:
                self.slowloris_longest = max(self.slowloris_longest,
                                             trio.current_time() - opened)


async def bystander_round_trips(url: str, me: Account, conversation_id: str,
                                seconds: float) -> tuple[list[float], list[str]]:
    """Round trips for `seconds`: a WebSocket send until `sent`, then GET /me."""
    latencies: list[float] = []
    problems: list[str] = []
    deadline = trio.current_time() + seconds
    async with ChatClient(url, token=me.token) as client, \
            httpx.AsyncClient(base_url=url, headers=me.headers, timeout=30) as http:
        while trio.current_time() < deadline:
            try:
                async with client.connect() as live:
                    while trio.current_time() < deadline:
                        for kind in ("ws send", "GET /me"):
                            started = trio.current_time()
                            with trio.move_on_after(ROUND_TRIP_TIMEOUT) as timer:
                                if kind == "ws send":
                                    sent = await live.send(conversation_id, "bystander")
                                    assert sent["type"] == "sent", sent
                                else:
                                    response = await http.get("/me")
                                    assert response.status_code == 200, response.text
                            latencies.append(trio.current_time() - started)
                            if timer.cancelled_caught:
                                problems.append(f"{kind}: no answer in {ROUND_TRIP_TIMEOUT} s")
                        await trio.sleep(0.02)
            except Exception as exc:
                problems.append(f"bystander connection failed: {exc!r}")
                await trio.sleep(0.1)
    return latencies, problems


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


@dataclass
class Outcome:
    latencies: list[float]
    problems: list[str]
    health: list[int]  # GET /healthz during the zoo, after it; GET /me after it


async def run_zoo(zoo: Zoo) -> Outcome:
    url = zoo.url
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        bystander, friend = await new_account(http), await new_account(http)
        chat = await bystander.direct_with(friend)
        pinger, flooder = await new_account(http), await new_account(http)
        slow_handle = fresh_handle("slow")
        slow, spammer = await new_account(http, slow_handle), await new_account(http)
        firehose = await spammer.group("firehose", slow)
        async with ChatClient(url, token=spammer.token) as spam_client, \
                spam_client.connect() as spam_live:
            async with trio.open_nursery() as fill:
                for part in range(4):
                    async def send_some(part: int = part) -> None:
                        for n in range(HISTORY // 4):
                            await spam_live.send(firehose, f"old {part}.{n} " + "h" * 1000)
                    fill.start_soon(send_some)

            async def slow_again() -> None:
                # A new login each time: a device without a cursor, so it gets history.
                async with ChatClient(url) as client:
                    await client.login(slow_handle, PASSWORD, "slow")
                    assert client.token is not None
                    try:
                        await zoo.slow_reader(client.token, firehose)
                    finally:
                        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                            await client.logout()  # devices are capped per account

            ws_head = (f"GET /ws?token={slow.token} HTTP/1.1\r\nHost: chatd\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n").encode()
            rest_head = (f"GET /me HTTP/1.1\r\nHost: chatd\r\n"
                         f"Authorization: Bearer {slow.token}\r\n").encode()
            async with trio.open_nursery() as hostile:
                hostile.start_soon(zoo.forever, "pinger",
                                   lambda: zoo.non_reading_pinger(pinger.token))
                hostile.start_soon(zoo.forever, "fragment flood",
                                   lambda: zoo.fragment_flood(flooder.token))
                hostile.start_soon(zoo.forever, "slow reader", slow_again)
                hostile.start_soon(zoo.spammer, spam_live, firehose)
                for n in range(SLOWLORIS_CONNECTIONS):
                    head = ws_head if n % 2 else rest_head
                    hostile.start_soon(zoo.forever, "slowloris",
                                       lambda head=head: zoo.slowloris(head))
                await trio.sleep(WARMUP)
                latencies, problems = await bystander_round_trips(
                    url, bystander, chat, DURATION)
                during = await http.get("/healthz")
                hostile.cancel_scope.cancel()
        after = await http.get("/healthz")
        me = await bystander.get("/me")
    return Outcome(latencies, problems, [during.status_code, after.status_code, me.status_code])


async def test_a_zoo_of_hostile_clients_does_not_slow_a_bystander(tmp_path: Path) -> None:
    # The flooders and the bystander share 127.0.0.1: its per-address send budget would
    # refuse the bystander. Containment is tested here, not limits (test_ratelimits.py).
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                           extra_env=UNLIMITED_SENDS_ENV)
    started = time.monotonic()
    alive = False
    try:
        zoo = Zoo(await server.ready())
        with trio.fail_after(WARMUP + DURATION + 60):
            outcome = await run_zoo(zoo)
        alive = server.process.poll() is None
    finally:
        if server.process.poll() is not None:
            print(f"the server exited ({server.process.returncode}); its log:\n"
                  f"{(tmp_path / 'server.log').read_text()[-6000:]}")
        server.kill()
    log = (tmp_path / "server.log").read_text()
    latencies = outcome.latencies
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    print(f"\nhostile zoo: {len(latencies)} bystander round trips in {DURATION:g} s: "
          f"p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max "
          f"{max(latencies, default=0) * 1000:.1f} ms; hostile activity {zoo.counts}; "
          f"longest slowloris connection {zoo.slowloris_longest:.1f} s; "
          f"{time.monotonic() - started:.1f} s in all")
    tracebacks = log.count("Traceback")
    if outcome.problems or tracebacks:
        print("bystander problems:", outcome.problems[:10])
        print(f"server log ({tracebacks} tracebacks):\n{log[-4000:]}")
    assert alive, f"the server process died:\n{log[-4000:]}"
    assert outcome.health == [200, 200, 200], outcome.health
    assert not outcome.problems, outcome.problems[:10]
    assert len(latencies) >= 20, latencies
    assert p95 < P95_LIMIT, f"bystander p95 {p95 * 1000:.1f} ms (limit {P95_LIMIT * 1000:.0f})"
