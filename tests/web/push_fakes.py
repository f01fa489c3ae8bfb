"""Local fakes of what pushes go to: a Web Push service and a Sygnal-style gateway, each
a small HTTP/1.1 server on loopback (h11 over Trio sockets) run in the test's nursery.

The Web Push fake does what a push service does to a request: it checks the VAPID JWT
(ES256 signature with the `k=` key, which must be the server's published key; `aud`
the fake's origin; `exp` in the future and at most 24 h away; `sub` mailto: or https:)
and decrypts the body with `http_ece` (aes128gcm) using the subscription's private key
and auth secret, as the browser would. A request that fails either check is answered
400 and recorded as refused, so a test sees it.

Pushes go over plain http: `push.allow_private_endpoints`, which the tests set, allows
http as well as loopback addresses (docs/notifications.md).

Each path can be told how to answer: a list of statuses taken in order (then 201), a
`Retry-After`, or to hang (never answer).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import http_ece
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Received:
    """One request the fake took."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    #: The decrypted JSON payload (Web Push) or the posted JSON (gateway).
    payload: dict[str, Any] | None = None
    #: Why the fake refused it (None: accepted).
    refused: str | None = None
    #: The VAPID JWT's claims (Web Push).
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass
class BrowserSubscription:
    """What a browser's PushManager.subscribe() makes: a key pair and an auth secret."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @property
    def p256dh(self) -> str:
        return b64url(self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    def body(self) -> dict[str, Any]:
        return {"kind": "webpush", "endpoint": self.endpoint,
                "keys": {"p256dh": self.p256dh, "auth": b64url(self.auth)}}


@dataclass
class Script:
    statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None
    hang: bool = False
    #: Gateway: pushkeys to answer as rejected.
    rejected: list[str] = field(default_factory=list)


class FakePushServer:
    """`kind` "webpush" or "gateway". `vapid_key`: the server's published key (base64url),
    which every JWT must carry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = 0
        self.received: list[Received] = []
        self.scripts: dict[str, Script] = {}
        self.subscriptions: dict[str, BrowserSubscription] = {}
        self.vapid_key: str | None = None
        self._arrived = trio.Event()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def subscription(self, name: str) -> BrowserSubscription:
        sub = BrowserSubscription(f"{self.origin}/push/{name}",
                                  ec.generate_private_key(ec.SECP256R1()), os.urandom(16))
        self.subscriptions[f"/push/{name}"] = sub
        return sub

    def accepted(self, path: str | None = None) -> list[Received]:
        return [item for item in self.received
                if item.refused is None and (path is None or item.path == path)
                and item.payload is not None]

    async def wait_for(self, count: int, path: str | None = None) -> list[Received]:
        """Until `count` accepted requests (to `path`) have arrived (10 s at most)."""
        with trio.fail_after(10):
            while len(self.accepted(path)) < count:
                self._arrived = trio.Event()
                await self._arrived.wait()
        return self.accepted(path)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await _read_request(stream, connection)
                if request is None:
                    return
                status, headers, answer = await self._handle(request, body)
                data = connection.send(h11.Response(status_code=status, headers=[
                    ("content-length", str(len(answer))), *headers]))
                data = (data or b"") + (connection.send(h11.Data(data=answer)) or b"")
                data += connection.send(h11.EndOfMessage()) or b""
                await stream.send_all(data)
                if connection.our_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    async def _handle(self, request: h11.Request, body: bytes,
                      ) -> tuple[int, list[tuple[str, str]], bytes]:
        path = request.target.decode()
        headers = {name.decode().lower(): value.decode() for name, value in request.headers}
        item = Received(path, headers, body, trio.current_time())
        script = self.scripts.get(path, Script())
        if script.hang:
            self.received.append(item)
            await trio.sleep_forever()
        if self.kind == "webpush":
            self._check_web_push(item)
        else:
            try:
                item.payload = json.loads(body)
            except ValueError:
                item.refused = "not JSON"
        self.received.append(item)
        self._arrived.set()
        if item.refused is not None:
            return 400, [], item.refused.encode()
        if script.statuses:
            status = script.statuses.pop(0)
            extra = [("retry-after", script.retry_after)] if script.retry_after else []
            if status >= 300:
                item.refused = f"scripted {status}"
                return status, extra, b""
        if self.kind == "gateway":
            devices = (item.payload or {}).get("notification", {}).get("devices", [])
            rejected = [device["pushkey"] for device in devices
                        if device.get("pushkey") in script.rejected]
            return 200, [("content-type", "application/json")], json.dumps(
                {"rejected": rejected}).encode()
        return 201, [], b""

    def _check_web_push(self, item: Received) -> None:
        headers = item.headers
        sub = self.subscriptions.get(item.path)
        if sub is None:
            item.refused = "unknown subscription"
            return
        for name in ("ttl", "urgency", "topic"):
            if name not in headers:
                item.refused = f"no {name} header"
                return
        if headers.get("content-encoding") != "aes128gcm":
            item.refused = "not aes128gcm"
            return
        try:
            item.claims = self._check_vapid(headers.get("authorization", ""))
        except (ValueError, KeyError, InvalidSignature) as exc:
            item.refused = f"VAPID: {exc!r}"
            return
        try:
            plaintext = http_ece.decrypt(item.body, private_key=sub.private_key,
                                         auth_secret=sub.auth, version="aes128gcm")
            item.payload = json.loads(plaintext)
        except Exception as exc:  # http_ece raises its own and cryptography's errors
            item.refused = f"decrypt: {exc!r}"

    def _check_vapid(self, authorization: str) -> dict[str, Any]:
        scheme, _, rest = authorization.partition(" ")
        if scheme != "vapid":
            raise ValueError("not a vapid Authorization")
        parts = dict(part.strip().split("=", 1) for part in rest.split(","))
        token, key = parts["t"], parts["k"]
        if self.vapid_key is not None and key != self.vapid_key:
            raise ValueError("k is not the server's published VAPID key")
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(unb64url(header_b64))
        if header.get("alg") != "ES256":
            raise ValueError("alg is not ES256")
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
        raw = unb64url(signature_b64)
        if len(raw) != 64:
            raise ValueError("signature is not 64 bytes")
        signature = encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                         int.from_bytes(raw[32:], "big"))
        public.verify(signature, f"{header_b64}.{claims_b64}".encode(),
                      ec.ECDSA(hashes.SHA256()))
        claims: dict[str, Any] = json.loads(unb64url(claims_b64))
        if claims.get("aud") != self.origin:
            raise ValueError(f"aud {claims.get('aud')!r} is not {self.origin}")
        exp = claims.get("exp")
        now = time.time()
        if not isinstance(exp, int) or not now < exp <= now + 24 * 3600:
            raise ValueError(f"exp {exp!r} not within 24 h")
        sub = str(claims.get("sub", ""))
        if not (sub.startswith("mailto:") or sub.startswith("https://")):
            raise ValueError(f"sub {sub!r}")
        return claims


async def _read_request(stream: trio.SocketStream, connection: h11.Connection,
                        ) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = b""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            connection.receive_data(data)
            if not data and request is None:
                return None, b""
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, body
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


@asynccontextmanager
async def fake_push_server(nursery: trio.Nursery, kind: str = "webpush",
                           ) -> AsyncIterator[FakePushServer]:
    server = FakePushServer(kind)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await server.run(task_status=task_status)

    await nursery.start(run)
    try:
        yield server
    finally:
        scope.cancel()
