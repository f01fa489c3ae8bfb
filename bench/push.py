"""`python -m bench.push`: how many pushes per second one shard sends to a local fake
Web Push service, and the server CPU each costs.

A server (its own process, `push.allow_private_endpoints` on, `push.grace_s` and
`push.coalesce_s` 0 so that every message is a push) and, in this process, a fake push
service on loopback that answers 201 to every request at once (it decrypts the first
with `http_ece` to check the pushes are real). Two groups of `--members` members, all
offline; in one every member has a Web Push subscription, in the other none. The same
`--messages` messages go into each, over REST, each sent once the previous is
acknowledged; the pushes are sent meanwhile.

- pushes/s: pushes the fake received, over the time from the first send to the last
  push's arrival (the sends are not the bound: see `sends_per_s`);
- server CPU per push: (CPU of the subscribed run - CPU of the run without
  subscriptions) / pushes, so the cost of the sends themselves is taken out.

Figures (and the command) are in docs/benchmarks.md, "Push notifications".
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import h11
import http_ece
import httpx
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.serverproc import BenchServer

PASSWORD = "bench password"


@dataclass
class PushResult:
    members: int
    messages: int
    per_origin_concurrency: int
    pushes: int
    seconds: float
    pushes_per_s: float
    sends_per_s: float
    server_cpu_us_per_push: float
    server_cpu_us_per_send_without_push: float
    decrypted_ok: bool


class FakePushService:
    """Counts POSTs; answers 201 at once."""

    def __init__(self) -> None:
        self.port = 0
        self.count = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.sample: bytes | None = None
        self.done = trio.Event()
        self.expected = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=1024)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        body = b""
        try:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    connection.receive_data(data)
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self._took(body)
                    body = b""
                    await stream.send_all(
                        connection.send(h11.Response(status_code=201, headers=[
                            ("content-length", "0")])) + connection.send(h11.EndOfMessage()))
                    connection.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    def _took(self, body: bytes) -> None:
        now = time.perf_counter()
        if not self.count:
            self.first_at = now
            self.sample = body
        self.count += 1
        self.last_at = now
        if self.expected and self.count >= self.expected:
            self.done.set()


async def _account(http: httpx.AsyncClient, handle: str) -> dict[str, str]:
    await http.post("/register", json={"handle": handle, "password": PASSWORD,
                                       "display_name": handle})
    body = (await http.post("/login", json={"handle": handle, "password": PASSWORD})).json()
    return {"user_id": body["user_id"], "Authorization": f"Bearer {body['token']}"}


async def _send_all(http: httpx.AsyncClient, sender: dict[str, str], group: str,
                    messages: int, tag: str) -> None:
    headers = {"Authorization": sender["Authorization"]}
    for n in range(messages):
        response = await http.post("/messages/send", headers=headers, json={
            "conversation_id": group, "client_msg_id": f"{tag}-{n}",
            "content_type": "text/plain", "body": f"message {n} " + "x" * 80})
        if response.status_code != 201:
            raise RuntimeError(response.text)


async def run_push(*, members: int, messages: int, concurrency: int) -> PushResult:
    server = BenchServer(sync=False, env={
        "CHATD_PUSH_ALLOW_PRIVATE_ENDPOINTS": "true", "CHATD_PUSH_GRACE_S": "0",
        "CHATD_PUSH_COALESCE_S": "0", "CHATD_PUSH_QUEUE_SIZE": "1000000",
        "CHATD_PUSH_PER_ORIGIN_CONCURRENCY": str(concurrency),
        "CHATD_LIMITS_MAX_GROUP_MEMBERS": str(members + 1)})
    fake = FakePushService()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.run)
            limits = httpx.Limits(max_connections=8)
            async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                         limits=limits) as http:
                stamp = time.monotonic_ns() % 10**9
                sender = await _account(http, f"psend{stamp}")
                plain = [await _account(http, f"pplain{stamp}_{n}") for n in range(members)]
                pushed = [await _account(http, f"ppush{stamp}_{n}") for n in range(members)]
                keys: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}
                for n, member in enumerate(pushed):
                    private = ec.generate_private_key(ec.SECP256R1())
                    auth = os.urandom(16)
                    endpoint = f"http://127.0.0.1:{fake.port}/push/{n}"
                    keys[endpoint] = (private, auth)
                    point = private.public_key().public_bytes(
                        serialization.Encoding.X962,
                        serialization.PublicFormat.UncompressedPoint)
                    response = await http.post("/push/subscriptions", headers={
                        "Authorization": member["Authorization"]}, json={
                        "kind": "webpush", "endpoint": endpoint,
                        "keys": {"p256dh": _b64(point), "auth": _b64(auth)}})
                    if response.status_code != 201:
                        raise RuntimeError(response.text)
                groups = []
                for accounts in (plain, pushed):
                    created = await http.post("/groups/create", headers={
                        "Authorization": sender["Authorization"]}, json={
                        "name": "bench", "members": [a["user_id"] for a in accounts]})
                    groups.append(created.json()["conversation_id"])
                # Warm up (connections, caches, the conversation's facts).
                await _send_all(http, sender, groups[0], 5, "warm-plain")
                fake.expected = members
                await _send_all(http, sender, groups[1], 1, "warm-push")
                with trio.fail_after(120):
                    await fake.done.wait()
                await trio.sleep(0.5)

                before = server.cpu_seconds()
                started = time.perf_counter()
                await _send_all(http, sender, groups[0], messages, "plain")
                plain_seconds = time.perf_counter() - started
                plain_cpu = server.cpu_seconds() - before

                received_before = fake.count
                fake.done = trio.Event()
                fake.expected = received_before + members * messages
                before = server.cpu_seconds()
                started = time.perf_counter()
                await _send_all(http, sender, groups[1], messages, "push")
                with trio.fail_after(600):
                    await fake.done.wait()
                elapsed = fake.last_at - started
                push_cpu = server.cpu_seconds() - before
                pushes = fake.count - received_before
            nursery.cancel_scope.cancel()
    finally:
        server.stop()
    decrypted_ok = False
    if fake.sample is not None:
        for private, auth in keys.values():
            try:
                json.loads(http_ece.decrypt(fake.sample, private_key=private,
                                            auth_secret=auth, version="aes128gcm"))
            except Exception:  # not this subscription's push: try the next
                continue
            decrypted_ok = True
            break
    return PushResult(
        members, messages, concurrency, pushes, elapsed, pushes / elapsed,
        messages / plain_seconds, (push_cpu - plain_cpu) / pushes * 1e6,
        plain_cpu / messages * 1e6, decrypted_ok)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=200,
                        help="members of each group, each with a subscription (200)")
    parser.add_argument("--messages", type=int, default=20,
                        help="messages into each group (20): members x messages pushes")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="push.per_origin_concurrency (4, the default)")
    parser.add_argument("--json", action="store_true", help="one JSON line, no table")
    args = parser.parse_args(argv)
    result = trio.run(lambda: run_push(members=args.members, messages=args.messages,
                                       concurrency=args.concurrency))
    figures: dict[str, Any] = asdict(result)
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:40} {value:.1f}" if isinstance(value, float) else f"{key:40} {value}")


if __name__ == "__main__":
    main()
