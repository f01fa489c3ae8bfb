"""A WebSocket client on a bare socket, for saying what well-behaved clients never would:
lone surrogates, floods, fragments, or nothing read at all."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgpack
import trio

from chatd.protocol import frames, handshake
from chatd.protocol import websocket as ws


@dataclass(frozen=True)
class Closed:
    """The server's close frame (code), or None when it hung up without one."""

    code: int | None
    reason: str = ""


class RawWebSocket:
    def __init__(self, sock: trio.socket.SocketType, codec: str) -> None:
        self.sock = sock
        self.codec = codec
        self._protocol = ws.WebSocketConnection(ws.Role.CLIENT, max_message=64 * 1024 * 1024)
        self._pending: list[ws.Event] = []
        self._frames: list[dict[str, Any]] = []
        #: Sizes of the WebSocket messages received, in order.
        self.message_sizes: list[int] = []

    @classmethod
    async def connect(cls, url: str, token: str | None = None, *, codec: str = "json",
                      receive_buffer: int | None = None,
                      headers: dict[str, str] | None = None) -> RawWebSocket:
        """Open /ws; `receive_buffer` shrinks the socket's kernel buffer (set before
        connecting, so the window is small from the start) to model a slow reader;
        `headers` go into the opening request."""
        parts = urlsplit(url)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect((parts.hostname, parts.port))
        target = "/ws" + (f"?token={token}" if token else "")
        await sock.send(handshake.opening_request(f"{parts.hostname}:{parts.port}", target,
                                                  handshake.new_key(), [f"chatd.{codec}"],
                                                  headers))
        raw = cls(sock, codec)
        head = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in head:
                data = await sock.recv(1)
                assert data, "the server hung up during the handshake"
                head += data
        assert head.startswith(b"HTTP/1.1 101"), head
        return raw

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self.sock.send(view)
            view = view[sent:]

    async def send_frame(self, opcode: int, payload: bytes, *, final: bool = True) -> None:
        frame = bytearray(ws.encode_frame(opcode, payload, mask=True))
        if not final:
            frame[0] &= 0x7F
        await self.send_all(bytes(frame))

    async def send_text(self, text: str) -> None:
        # surrogatepass: a test may need to send what a UTF-8 encoder refuses to.
        await self.send_frame(ws.OP_TEXT, text.encode("utf-8", "surrogatepass"))

    async def send(self, frame: dict[str, Any]) -> None:
        if self.codec == "json":
            await self.send_text(json.dumps(frame))
        else:
            await self.send_frame(ws.OP_BINARY, msgpack.packb(frame, use_bin_type=True))

    async def next_event(self) -> ws.Event | None:
        """The next whole message or control frame; None when the TCP connection ended."""
        while not self._pending:
            data = await self.sock.recv(65_536)
            if not data:
                return None
            self._pending.extend(self._protocol.receive_data(data))
        event = self._pending.pop(0)
        if isinstance(event, ws.TextMessage | ws.BytesMessage):
            self.message_sizes.append(len(event.data))
        return event

    async def next_frames(self) -> list[dict[str, Any]] | Closed:
        """The chatd frames of the next data message (a `batch` unpacked), or `Closed`."""
        while True:
            event = await self.next_event()
            if event is None:
                return Closed(None)
            if isinstance(event, ws.CloseReceived):
                return Closed(event.code, event.reason)
            if isinstance(event, ws.TextMessage | ws.BytesMessage):
                return frames.decode_server_message(event.data)

    async def next_frame(self, kind: str | None = None) -> dict[str, Any]:
        """The next frame (of `kind`, skipping others); fails if the socket closes."""
        while True:
            while not self._frames:
                got = await self.next_frames()
                assert not isinstance(got, Closed), got
                self._frames.extend(got)
            frame = self._frames.pop(0)
            if kind is None or frame["type"] == kind:
                return frame

    async def closed(self) -> Closed:
        """Read until the server closes; its close frame (or Closed(None))."""
        while True:
            got = await self.next_frames()
            if isinstance(got, Closed):
                return got

    def close(self) -> None:
        self.sock.close()
