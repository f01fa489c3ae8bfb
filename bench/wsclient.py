"""The benchmark's WebSocket client: `chatd.wsclient.ClientSocket` and JSON frames.

The benchmark must not be bounded by its clients: this is a socket, the shared sans-I/O
codec and JSON, with no background tasks, so one worker process can drive thousands of
sockets.
"""

from __future__ import annotations

from typing import Any

from chatd.protocol import frames
from chatd.wsclient import ClientSocket, WebSocketClosed


class BenchSocket:
    __slots__ = ("closed_with", "socket")

    def __init__(self, socket: ClientSocket) -> None:
        self.socket = socket
        self.closed_with: int | None = None

    @classmethod
    async def connect(cls, host: str, port: int, token: str, *,
                      source: str | None = None) -> BenchSocket:
        socket = await ClientSocket.connect(f"ws://{host}:{port}/ws?token={token}",
                                            subprotocols=["chatd.json"], local_address=source)
        return cls(socket)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.socket.send(frames.encode_request(frame, "json"))

    async def send_many(self, batch: list[dict[str, Any]]) -> None:
        """Several frames, each its own WebSocket message, in one write."""
        await self.socket.send_messages([frames.encode_request(frame, "json")
                                         for frame in batch])

    async def receive(self) -> list[dict[str, Any]]:
        """The frames of the next message (`batch` frames unpacked); [] once closed."""
        try:
            return frames.decode_server_message(await self.socket.receive())
        except WebSocketClosed as closed:
            self.closed_with = closed.code
            return []

    async def aclose(self) -> None:
        await self.socket.aclose()
