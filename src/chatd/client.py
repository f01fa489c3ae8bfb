"""`chatd.client`: a Python client for chatd, on httpx (REST) and `chatd.wsclient` (live).

    async with ChatClient("http://127.0.0.1:8080") as client:
        await client.login("alice", "correct horse")
        async with client.connect() as live:
            sent = await live.send(conversation_id, "hello")
            async for event in live.events():
                ...

Replies to frames that carry a request id (`sent`, `ok`, `pong`, and `error` with a `req`)
are routed to the call that is waiting for them; everything else arrives through
`events()`, with `batch` frames already unpacked. Reconnecting is just `connect()` again:
the server resumes after what this device acknowledged.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import trio

from chatd.protocol import frames
from chatd.protocol.frames import Codec
from chatd.wsclient import ClientSocket, WebSocketClosed


class ApiError(Exception):
    """An error answer from the server (REST status, or a WS `error` frame)."""

    def __init__(self, status: int, code: str, message: str,
                 retry_after: float | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: Seconds to wait before retrying, when a rate limit refused it (429).
        self.retry_after = retry_after
        #: The error's other fields, e.g. `users` of a 409 `device_list_stale`.
        self.details = details or {}


@dataclass(frozen=True)
class Credentials:
    token: str
    user_id: str
    device_id: str
    expires_at: int


_ids = itertools.count(1)


def new_client_msg_id() -> str:
    return f"py-{trio.current_time():.6f}-{next(_ids)}"


class ChatClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.credentials: Credentials | None = None
        #: The highest to-device id this client has been given (kept across connects,
        #: so a frame sent again after a reconnect is dropped: exactly once).
        self.to_device_seen = ToDeviceSeen()
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        # Downloads get connections of their own: a connection whose first request is a
        # media download is served by the server's direct path (sendfile, no framework),
        # one that began with another route is not (web/media_downloads.py).
        self._media_http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._media_http.aclose()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def request(self, method: str, path: str, json_body: Any = None,
                      params: dict[str, Any] | None = None) -> Any:
        response = await self._http.request(method, path, json=json_body, params=params,
                                            headers=self._auth())
        _raise_for_error(response)
        return response.json() if response.content else None

    # -- accounts -------------------------------------------------------------------------

    async def register(self, handle: str, password: str, display_name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", "/register", {
            "handle": handle, "password": password, "display_name": display_name})
        return result

    async def login(self, handle: str, password: str, device_name: str = "chatd.client",
                    ) -> Credentials:
        body = await self.request("POST", "/login", {
            "handle": handle, "password": password, "device_name": device_name})
        self.credentials = Credentials(body["token"], body["user_id"], body["device_id"],
                                       body["expires_at"])
        self.to_device_seen = ToDeviceSeen()  # a new device: its ids start again
        self.token = self.credentials.token
        return self.credentials

    async def logout(self) -> None:
        await self.request("POST", "/logout")
        self.token = None

    async def find_user(self, handle: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/users", params={"handle": handle})
        return result

    # -- conversations and messages -------------------------------------------------------

    async def open_direct(self, user_id: str, *, encrypted: bool | None = None,
                          ) -> dict[str, Any]:
        """The direct conversation with `user_id`. `encrypted`: create it end-to-end
        encrypted (True) or not (False); an existing one must match (409
        `encryption_mismatch`); None takes it as it is (new ones: not encrypted)."""
        body: dict[str, Any] = {"user_id": user_id}
        if encrypted is not None:
            body["encrypted"] = encrypted
        result: dict[str, Any] = await self.request("POST", "/conversations/direct", body)
        return result

    async def accept_request(self, conversation_id: str) -> dict[str, Any]:
        """Accept a message request (docs/privacy.md)."""
        result: dict[str, Any] = await self.request(
            "POST", f"/conversations/{conversation_id}/accept")
        return result

    async def create_group(self, name: str, members: list[str], *,
                           encrypted: bool = False) -> dict[str, Any]:
        """A new group; `encrypted`: it takes only ciphertext content types, for ever."""
        body: dict[str, Any] = {"name": name, "members": members}
        if encrypted:
            body["encrypted"] = True
        result: dict[str, Any] = await self.request("POST", "/groups/create", body)
        return result

    async def conversations(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.request("GET", "/conversations"))[
            "conversations"]
        return result

    async def send(self, conversation_id: str, text: str, *,
                   client_msg_id: str | None = None,
                   attachments: list[str | tuple[str, str]] | None = None,
                   reply_to: int = 0, mentions: list[str] | None = None,
                   content_type: str = "text/plain",
                   device_list_version: dict[str, int] | None = None) -> dict[str, Any]:
        """Send a text message, with the media ids of `attachments` (from `upload`); an
        attachment may be (media id, id of a thumbnail you uploaded for it). `reply_to`:
        the seq it answers; `mentions`: user ids mentioned explicitly (a text's @handles
        are resolved by the server). `content_type` other than text/*: `text` is the
        base64 of the bytes. `device_list_version`: {user_id: version} as `query_keys`
        gave them; a stale one is refused with 409 `device_list_stale` (the error's
        `details["users"]` are the users to query again)."""
        message: dict[str, Any] = {
            "conversation_id": conversation_id, "client_msg_id": client_msg_id
            or new_client_msg_id(), "content_type": content_type, "body": text}
        if device_list_version:
            message["device_list_version"] = device_list_version
        if attachments:
            message["attachments"] = attachment_list(attachments)
        if reply_to:
            message["reply_to"] = reply_to
        if mentions:
            message["mentions"] = mentions
        result: dict[str, Any] = await self.request("POST", "/messages/send", message)
        return result

    async def forward(self, conversation_id: str, seq: int, to: list[str], *,
                      client_msg_id: str | None = None) -> list[dict[str, Any]]:
        """Copy a message into up to 5 conversations: one result per target, in order
        (`seq`, `message_id`, `ts` of its copy, or an `error`)."""
        body: dict[str, Any] = {"from": {"conversation_id": conversation_id, "seq": seq},
                                "to": to}
        if client_msg_id:
            body["client_msg_id"] = client_msg_id
        result: list[dict[str, Any]] = (await self.request(
            "POST", "/messages/forward", body))["results"]
        return result

    # -- reactions, edits, pins (issue 18) ------------------------------------------------

    async def react(self, conversation_id: str, seq: int, emoji: str) -> dict[str, Any]:
        """React to a message; the answer is its reaction summary."""
        result: dict[str, Any] = await self.request(
            "POST", f"/messages/{conversation_id}/{seq}/reactions", {"emoji": emoji})
        return result

    async def unreact(self, conversation_id: str, seq: int, emoji: str) -> None:
        await self.request("DELETE", f"/messages/{conversation_id}/{seq}/reactions/"
                           + quote(emoji, safe=""))

    async def edit(self, conversation_id: str, seq: int, body: str) -> dict[str, Any]:
        """Replace a message's text; the answer is {seq, edited_at}."""
        result: dict[str, Any] = await self.request(
            "POST", f"/messages/{conversation_id}/{seq}/edit", {"body": body})
        return result

    async def edits(self, conversation_id: str, seq: int) -> list[dict[str, Any]]:
        """A message's earlier versions: [{seq, body, ts}, ...]."""
        result: list[dict[str, Any]] = (await self.request(
            "GET", f"/messages/{conversation_id}/{seq}/edits"))["edits"]
        return result

    async def pin(self, conversation_id: str, seq: int) -> None:
        await self.request("POST", f"/conversations/{conversation_id}/pins/{seq}")

    async def unpin(self, conversation_id: str, seq: int) -> None:
        await self.request("DELETE", f"/conversations/{conversation_id}/pins/{seq}")

    async def members(self, conversation_id: str) -> list[dict[str, Any]]:
        """A conversation's members ({user_id, role}); their handles come from `user`."""
        result: list[dict[str, Any]] = (await self.request(
            "GET", f"/conversations/{conversation_id}"))["members"]
        return result

    async def user(self, user_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/users/{user_id}")
        return result

    # -- media ------------------------------------------------------------------------------

    async def upload(self, source: bytes | Path, content_type: str, *,
                     filename: str | None = None) -> dict[str, Any]:
        """Upload bytes, or a file streamed from disk (never read whole into memory).
        `application/octet-stream` is stored opaque: what end-to-end encrypted media use."""
        headers = {**self._auth(), "Content-Type": content_type}
        if isinstance(source, Path):
            filename = filename if filename is not None else source.name
            size = (await trio.Path(source).stat()).st_size
            headers["Content-Length"] = str(size)
            content: bytes | AsyncIterator[bytes] = _file_chunks(source)
        else:
            content = source
        if filename:
            headers["X-Filename"] = quote(filename, safe="")
        response = await self._http.post("/media/upload", content=content, headers=headers)
        _raise_for_error(response)
        result: dict[str, Any] = response.json()
        return result

    async def download(self, media_id: str, destination: Path, *,
                       thumbnail: int | None = None) -> Path:
        """Download a media to `destination`, resuming a partial download: bytes already in
        `destination.part` are kept and the rest asked for with Range. The result is
        checked against the media's sha256 (its ETag) before it is renamed into place."""
        path = f"/media/{media_id}" + (f"/thumbnail?size={thumbnail}" if thumbnail else "")
        partial = destination.with_name(destination.name + ".part")
        have = partial.stat().st_size if partial.exists() else 0
        headers = self._auth()
        if have:
            headers["Range"] = f"bytes={have}-"
        async with self._media_http.stream("GET", path, headers=headers) as response:
            if response.status_code == 416:
                have = 0  # the partial file is not a prefix of this media: start again
                await response.aclose()
                partial.unlink()
                return await self.download(media_id, destination, thumbnail=thumbnail)
            if response.status_code >= 400:
                await response.aread()
                _raise_for_error(response)
            mode = "ab" if response.status_code == 206 else "wb"
            expected = response.headers.get("ETag", "").strip('"')
            async with await trio.open_file(partial, mode) as file:
                async for chunk in response.aiter_bytes(1 << 20):
                    await file.write(chunk)
        if thumbnail is None and expected and await trio.to_thread.run_sync(
                _sha256_of, partial) != expected:
            partial.unlink()
            raise ApiError(0, "corrupt_download", "the downloaded bytes do not match the "
                           "media's sha256; download again")
        os.replace(partial, destination)
        return destination

    async def media_bytes(self, media_id: str) -> bytes:
        response = await self._media_http.get(f"/media/{media_id}", headers=self._auth())
        _raise_for_error(response)
        return response.content

    async def media_link(self, media_id: str, ttl_s: int = 3600) -> str:
        """A signed URL that works without a token (for <img>, <video>, curl)."""
        result = await self.request("POST", f"/media/{media_id}/link", {"ttl_s": ttl_s})
        return self.base_url + str(result["url"])

    async def delete_media(self, media_id: str) -> None:
        await self.request("DELETE", f"/media/{media_id}")

    async def history(self, conversation_id: str, **params: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/messages/{conversation_id}",
                                                    params=params)
        return result

    # -- end-to-end encryption: to-device messages, sealed sender (issue 14) -------------------

    async def send_to_device(self, messages: dict[str, dict[str, dict[str, Any]]], *,
                             txn_id: str | None = None) -> dict[str, Any]:
        """Queue to-device messages: `{user_id: {device_id or "*": {"type", "content"}}}`
        ("*": every device of that user). A retry with the same `txn_id` queues nothing
        again and answers as the first time."""
        result: dict[str, Any] = await self.request("POST", "/to_device", {
            "txn_id": txn_id or new_client_msg_id(), "messages": messages})
        return result

    async def sender_certificate(self) -> dict[str, Any]:
        """A short-lived sender certificate for sealed sender: {certificate (base64 of
        the signed JSON), signature (base64 Ed25519), key_id, and its fields decoded:
        user_id, device_id, identity_key, expires}."""
        result: dict[str, Any] = await self.request("GET", "/certificate/sender")
        return result

    async def server_keys(self) -> dict[str, str]:
        """The server's certificate keys: key_id -> base64 Ed25519 public key."""
        result: dict[str, str] = (await self.request("GET", "/certificate/server_keys"))[
            "keys"]
        return result

    async def set_access_key(self, access_key: bytes) -> None:
        """Store this account's 16-byte unidentified access key (sealed sender)."""
        await self.request("PUT", "/me/access_key",
                           {"access_key": base64.b64encode(access_key).decode()})

    async def sealed_send(self, user_id: str, device_id: str, envelope: bytes,
                          access_key: bytes) -> None:
        """Deliver a sealed envelope to one device of `user_id` without saying who sends
        it: no bearer token, only the recipient's access key."""
        response = await self._http.post("/sealed/send", json={
            "user_id": user_id, "device_id": device_id,
            "envelope": base64.b64encode(envelope).decode()},
            headers={ACCESS_KEY_HEADER: base64.b64encode(access_key).decode()})
        _raise_for_error(response)

    # -- end-to-end keys (issue 14; docs/api.md "Keys") ----------------------------------

    async def upload_keys(self, identity: dict[str, str],
                          one_time_keys: dict[str, dict[str, str]] | None = None,
                          fallback_key: dict[str, dict[str, str]] | None = None) -> int:
        """Publish this device's keys: `identity` {curve25519, ed25519, signature},
        `one_time_keys` and `fallback_key` {key_id: {key, signature}} (unpadded base64
        as vodozemac prints it; each signature over the key's base64 text). Returns how
        many one-time keys the server holds for this device."""
        body: dict[str, Any] = {"identity": identity}
        if one_time_keys:
            body["one_time_keys"] = one_time_keys
        if fallback_key:
            body["fallback_key"] = fallback_key
        result = await self.request("POST", "/keys/upload", body)
        count: int = result["one_time_key_count"]
        return count

    async def query_keys(self, user_ids: list[str]) -> list[dict[str, Any]]:
        """Each user's device-list `version` and `devices` [{device_id, curve25519,
        ed25519, signature}], in the order asked."""
        result: list[dict[str, Any]] = (await self.request(
            "POST", "/keys/query", {"user_ids": user_ids}))["users"]
        return result

    async def claim_keys(self, devices: list[tuple[str, str]]) -> dict[str, Any]:
        """One key per (user_id, device_id): {"keys": [{user_id, device_id, key_id, key,
        signature, fallback}], "missing": [{user_id, device_id}]} (devices with no key
        to give, unknown, or not that user's)."""
        result: dict[str, Any] = await self.request("POST", "/keys/claim", {
            "devices": [{"user_id": user, "device_id": device} for user, device in devices]})
        return result

    # -- live -----------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(self, codec: Codec = "json") -> AsyncIterator[LiveConnection]:
        if not self.token:
            raise ApiError(401, "missing_token", "log in before connecting")
        ws_url = self.base_url.replace("http", "ws", 1) + f"/ws?token={self.token}"
        with trio.fail_after(10):
            socket = await ClientSocket.connect(ws_url, subprotocols=[f"chatd.{codec}"])
        try:
            async with trio.open_nursery() as nursery:
                live = LiveConnection(socket, codec, to_device_seen=self.to_device_seen)
                nursery.start_soon(live.receive_forever)
                try:
                    yield live
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await socket.aclose()


def attachment_list(attachments: list[str | tuple[str, str]]) -> list[dict[str, str]]:
    """Attachments as the API takes them: a media id, or (media id, thumbnail id)."""
    return [{"media_id": item} if isinstance(item, str)
            else {"media_id": item[0], "thumbnail_media_id": item[1]} for item in attachments]


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        retry_after = response.headers.get("Retry-After", "")
        raise ApiError(response.status_code, error["code"], error["message"],
                       float(retry_after) if retry_after.isdigit() else None,
                       {key: value for key, value in error.items()
                        if key not in ("code", "message")})
    except (ValueError, KeyError, TypeError):
        raise ApiError(response.status_code, "http_error", response.text) from None


async def _file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as file:
        while chunk := await file.read(size):
            yield chunk


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


#: The header `POST /sealed/send` takes the recipient's access key in (base64).
ACCESS_KEY_HEADER = "Unidentified-Access-Key"


class ToDeviceSeen:
    """The highest to-device id a client was given; shared by its connections."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0


class LiveConnection:
    def __init__(self, socket: ClientSocket, codec: Codec,
                 to_device_seen: ToDeviceSeen | None = None) -> None:
        self.socket = socket
        self.codec = codec
        self.to_device_seen = to_device_seen or ToDeviceSeen()
        self._events_in, self._events_out = trio.open_memory_channel[dict[str, Any]](10_000)
        self._waiters: dict[str, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.close_code: int | None = None
        self.close_reason: str | None = None

    async def receive_forever(self) -> None:
        """Route replies to their callers and the rest to `events()`, until closed."""
        try:
            while True:
                for item in frames.decode_server_message(await self.socket.receive()):
                    if item.get("type") == "to_device" and not self._new_to_device(item):
                        continue  # sent again after a reconnect: this client has it
                    waiter = self._waiters.pop(item.get("req", ""), None) if item.get(
                        "type") in ("sent", "ok", "pong", "error") else None
                    if waiter is not None:
                        waiter.send_nowait(item)
                    else:
                        await self._events_in.send(item)
        except WebSocketClosed as closed:
            self.close_code = closed.code
            self.close_reason = closed.reason
        finally:
            self._events_in.close()
            for waiter in self._waiters.values():
                waiter.close()

    def _new_to_device(self, item: dict[str, Any]) -> bool:
        to_device_id = item.get("id")
        if not isinstance(to_device_id, int) or to_device_id <= self.to_device_seen.last:
            return False
        self.to_device_seen.last = to_device_id
        return True

    async def _call(self, frame: dict[str, Any]) -> dict[str, Any]:
        req = frame.setdefault("req", f"r{next(_ids)}")
        send_channel, receive_channel = trio.open_memory_channel[dict[str, Any]](1)
        self._waiters[req] = send_channel
        await self.send_frame(frame)
        try:
            reply = await receive_channel.receive()
        except trio.EndOfChannel:
            raise ApiError(0, "closed", f"connection closed ({self.close_code})") from None
        if reply["type"] == "error":
            retry_after = reply.get("retry_after")
            status = 429 if retry_after is not None else (
                409 if reply["code"] == "device_list_stale" else 400)
            raise ApiError(status, reply["code"], reply["message"], retry_after,
                           {key: value for key, value in reply.items()
                            if key not in ("type", "code", "message", "req")})
        return reply

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Send any frame as built by `chatd.protocol.frames` (or by hand, for tests)."""
        await self.socket.send(frames.encode_request(frame, self.codec))

    async def send(self, conversation_id: str, body: str | bytes, *,
                   content_type: str = "text/plain",
                   client_msg_id: str | None = None,
                   attachments: list[str | tuple[str, str]] | None = None,
                   reply_to: int = 0, mentions: list[str] | None = None,
                   device_list_version: dict[str, int] | None = None) -> dict[str, Any]:
        """Send a message (with `attachments`, `reply_to`, `mentions` and
        `device_list_version` as `ChatClient.send` takes them); returns the `sent` frame
        once it is durable."""
        if isinstance(body, bytes) and self.codec == "json":
            body = base64.b64encode(body).decode()
        return await self._call(frames.send_request(
            f"r{next(_ids)}", conversation_id, client_msg_id or new_client_msg_id(), body,
            content_type, attachment_list(attachments) if attachments else None,
            reply_to, list(mentions or ()), device_list_version=device_list_version))

    async def react(self, conversation_id: str, seq: int, emoji: str) -> None:
        """React to a message ("" removes your reaction); answered `ok`."""
        await self._call({"type": "react", "conversation_id": conversation_id, "seq": seq,
                          "emoji": emoji})

    async def ack(self, conversation_id: str, seq: int) -> None:
        await self._call(frames.ack_request(conversation_id, seq))

    async def read(self, conversation_id: str, seq: int) -> None:
        await self._call(frames.read_request(conversation_id, seq))

    async def typing(self, conversation_id: str) -> None:
        await self._call(frames.typing_request(conversation_id))

    async def sync(self, cursors: dict[str, int]) -> None:
        await self._call(frames.sync_request(cursors))

    async def ping(self) -> None:
        await self._call(frames.ping_request())

    async def ack_to_device(self, up_to: int) -> None:
        """The server may delete this device's to-device messages up to id `up_to`."""
        await self._call(frames.to_device_ack_request(up_to))

    async def to_device(self) -> AsyncIterator[dict[str, Any]]:
        """The `to_device` frames, each once, in id order: {"type": "to_device", id,
        message_type, content, and sender_user_id, sender_device_id (not for a
        `sealed` message_type)}. Other events are dropped: use `events()` to see both."""
        async for event in self._events_out:
            if event.get("type") == "to_device":
                yield event

    async def next_event(self) -> dict[str, Any]:
        """The next frame that is not a reply; raises trio.EndOfChannel once closed."""
        return await self._events_out.receive()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        async for event in self._events_out:
            yield event

    async def aclose(self) -> None:
        await self.socket.aclose()
