"""A lean WebSocket client for load generation, on chatd's own sans-I/O codec.

The benchmark must not be bounded by its clients: this one is a socket, a frame reader and
JSON, with no background tasks, so one worker process can drive thousands of sockets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import trio

from chatd.protocol import websocket as ws


class HandshakeFailed(Exception):
    pass


class BenchSocket:
    __slots__ = ("_lock", "_pending", "_reader", "closed_with", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._lock = trio.Lock()  # a sender task and an acking receiver share the socket
        self._reader = ws.FrameReader(max_message=1 << 24, expect_masked=False)
        self._pending: list[tuple[int, object]] = []
        self.closed_with: int | None = None

    @classmethod
    async def connect(cls, host: str, port: int, token: str, *,
                      source: str | None = None) -> BenchSocket:
        stream = await trio.open_tcp_stream(host, port, local_address=source)
        try:
            await stream.send_all(ws.opening_request(f"{host}:{port}", f"/ws?token={token}",
                                                     ws.new_key(), ["chatd.json"]))
            received = b""
            while (length := ws.head_length(received)) is None:
                chunk = await stream.receive_some(65_536)
                if not chunk:
                    raise HandshakeFailed("the server hung up during the handshake")
                received += chunk
            if not received.startswith(b"HTTP/1.1 101 "):
                raise HandshakeFailed(received[:length].decode("latin-1").split("\r\n")[0])
        except BaseException:
            await stream.aclose()
            raise
        sock = cls(stream)
        sock._pending = sock._reader.feed(received[length:])
        return sock

    async def send(self, frame: dict[str, Any]) -> None:
        await self.send_raw(ws.encode_frame(ws.OP_TEXT, json.dumps(frame).encode(), mask=True))

    async def send_raw(self, data: bytes) -> None:
        async with self._lock:
            await self.stream.send_all(data)

    async def receive(self) -> list[dict[str, Any]]:
        """The next frames that arrived (`batch` frames unpacked); [] once closed."""
        while True:
            if self._pending:
                messages, self._pending = self._pending, []
                frames = list(self._frames(messages))
                if frames or self.closed_with is not None:
                    return frames
            if self.closed_with is not None:
                return []
            data = await self.stream.receive_some(262_144)
            if not data:
                self.closed_with = ws.CLOSE_NO_STATUS
                return []
            self._pending = self._reader.feed(data)

    def _frames(self, messages: list[tuple[int, object]]) -> Iterator[dict[str, Any]]:
        for opcode, payload in messages:
            if opcode == ws.OP_TEXT:
                frame = json.loads(payload)  # type: ignore[arg-type]
                if frame["type"] == "batch":
                    yield from frame["frames"]
                else:
                    yield frame
            elif opcode == ws.OP_CLOSE:
                self.closed_with = payload[0]  # type: ignore[index]

    async def aclose(self) -> None:
        try:
            with trio.move_on_after(1):
                await self.send_raw(ws.encode_close(ws.CLOSE_NORMAL, mask=True))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await self.stream.aclose()
