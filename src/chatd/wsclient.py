"""A WebSocket client on a Trio stream, with chatd's own sans-I/O codec in the client role.

The transport of `chatd.client` and of the benchmark's load generators. Why not
trio-websocket: it runs a background reader task and an unbounded message queue per
connection, left its TCP stream open when the server closed first (the client reached
into its private `_stream` to close it), and cost the benchmark more CPU per message than
the server it measured. This is one stream, one codec object and no task of its own;
pings are answered as they are read.
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

import trio

from chatd.protocol import handshake
from chatd.protocol import websocket as ws

_RECEIVE_SIZE = 262_144


class WebSocketClosed(Exception):
    """The connection is over: the server's close `code` and `reason` (1006 when the TCP
    connection ended without a close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed ({code}) {reason}".strip())
        self.code = code
        self.reason = reason


CLOSE_ABNORMAL = 1006


class ClientSocket:
    __slots__ = ("_events", "_protocol", "_send_lock", "closed", "stream", "subprotocol")

    def __init__(self, stream: trio.SocketStream, subprotocol: str | None, *,
                 max_message: int, received: bytes = b"") -> None:
        self.stream = stream
        self.subprotocol = subprotocol
        self._protocol = ws.WebSocketConnection(ws.Role.CLIENT, max_message=max_message)
        #: Frames that came in behind the handshake's answer.
        self._events: list[ws.Event] = self._protocol.receive_data(received)
        self._send_lock = trio.Lock()  # a sender and an answering receiver share the stream
        #: Set once the connection is over.
        self.closed: WebSocketClosed | None = None

    @classmethod
    async def connect(cls, url: str, *, subprotocols: list[str],
                      local_address: str | None = None, max_message: int = 1 << 26,
                      ) -> ClientSocket:
        """Open `url` (ws://host:port/path?query) and complete the handshake."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        stream = await trio.open_tcp_stream(host, port, local_address=local_address)
        try:
            key = handshake.new_key()
            await stream.send_all(handshake.opening_request(f"{host}:{port}", target, key,
                                                            subprotocols))
            received = b""
            while (length := handshake.head_length(received)) is None:
                chunk = await stream.receive_some(65_536)
                if not chunk:
                    raise handshake.HandshakeError(handshake.HandshakeProblem.REFUSED,
                                                   "the server hung up during the handshake")
                received += chunk
            chosen = handshake.check_accept(received[:length], key)
        except BaseException:
            await stream.aclose()
            raise
        return cls(stream, chosen, max_message=max_message, received=received[length:])

    async def send(self, data: str | bytes) -> None:
        if self.closed is not None:
            raise self.closed
        frame = self._protocol.send_message(data.encode() if isinstance(data, str) else data,
                                            binary=isinstance(data, bytes))
        await self._send(frame)

    async def send_messages(self, messages: list[str | bytes]) -> None:
        """Several messages in one write (one system call, one wake-up for the server)."""
        if self.closed is not None:
            raise self.closed
        await self._send(b"".join(
            self._protocol.send_message(m.encode() if isinstance(m, str) else m,
                                        binary=isinstance(m, bytes)) for m in messages))

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        async with self._send_lock:
            await self.stream.send_all(data)

    async def receive(self) -> str | bytes:
        """The next message; raises `WebSocketClosed` once the connection is over."""
        while True:
            while self._events:
                event = self._events.pop(0)
                if isinstance(event, ws.TextMessage | ws.BytesMessage):
                    return event.data
                if isinstance(event, ws.Ping):
                    await self._send(self._protocol.pong(event.payload))
                elif isinstance(event, ws.CloseReceived):
                    with contextlib.suppress(trio.BrokenResourceError,
                                             trio.ClosedResourceError):
                        await self._send(self._protocol.close(event.code))
                    await self._finish(WebSocketClosed(event.code, event.reason))
            if self.closed is not None:
                raise self.closed
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                await self._finish(WebSocketClosed(CLOSE_ABNORMAL, "no close frame"))
                continue
            try:
                self._events = self._protocol.receive_data(data)
            except ws.ProtocolError as exc:
                await self.aclose(exc.close_code, exc.reason)

    async def aclose(self, code: int = ws.CLOSE_NORMAL, reason: str = "") -> None:
        """Send our close (if the connection is still open) and close the stream."""
        try:
            if self.closed is None:
                with trio.move_on_after(1), contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._send(self._protocol.close(code, reason))
        finally:
            # Even when cancelled while saying goodbye: the socket must not leak.
            await self._finish(WebSocketClosed(code, reason))

    async def _finish(self, closed: WebSocketClosed) -> None:
        if self.closed is None:
            self.closed = closed
        with trio.CancelScope(shield=True):
            await self.stream.aclose()
