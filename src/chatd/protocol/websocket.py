"""RFC 6455 WebSocket framing and connection state, sans-I/O, in the shape of wsproto.

`WebSocketConnection` takes received bytes (`receive_data`) and returns typed events
(`TextMessage`, `BytesMessage`, `Ping`, `Pong`, `CloseReceived`); what to send comes back
as bytes from its `send_*` and `close` methods. It owns the connection's state
(`ConnectionState`): once our close is sent it answers nothing more and reads a bounded
amount; once both closes have crossed it is `CLOSED`. The same class serves both roles:
a server expects masked frames and sends unmasked ones, a client the reverse.

Everything the peer gets wrong raises `ProtocolError` with the close code to send (1002,
1007, 1008 or 1009). It is deliberately narrow: no extensions (permessage-deflate would
cost a zlib context per socket) and outgoing messages are never fragmented.

Why not wsproto itself: receiving a frame costs ~4.7 µs here against ~21.8 µs there, and
the live stream receives every ack and send through it (docs/benchmarks.md).
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_DATA_OPCODES = (OP_TEXT, OP_BINARY)
_CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

#: The most frames one fragmented message may arrive in.
MAX_FRAGMENTS = 128
#: Bytes read from a peer after our close frame before it counts as not closing.
MAX_READ_AFTER_CLOSE = 256 * 1024


class ProtocolError(Exception):
    """The peer broke the protocol; close the connection with `close_code`."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextMessage:
    data: str


@dataclass(frozen=True, slots=True)
class BytesMessage:
    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    code: int
    reason: str


Event = TextMessage | BytesMessage | Ping | Pong | CloseReceived


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class ConnectionState(enum.Enum):
    OPEN = "open"
    #: We sent our close and wait for the peer's.
    LOCAL_CLOSING = "local closing"
    #: The peer sent its close and we have not answered yet.
    REMOTE_CLOSING = "remote closing"
    CLOSED = "closed"


# -- encoding -----------------------------------------------------------------------------


def _xor(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    # One big-integer XOR is far faster in CPython than a loop over bytes.
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        length, "little")


def encode_frame(opcode: int, payload: bytes, *, mask: bool = False) -> bytes:
    """One final frame. Servers send unmasked frames; clients must mask."""
    length = len(payload)
    first = 0x80 | opcode
    masked = 0x80 if mask else 0
    if length < 126:
        head = bytes((first, masked | length))
    elif length < 65_536:
        head = struct.pack("!BBH", first, masked | 126, length)
    else:
        head = struct.pack("!BBQ", first, masked | 127, length)
    if mask:
        key = os.urandom(4)
        return head + key + _xor(payload, key)
    return head + payload


def encode_close(code: int, reason: str = "", *, mask: bool = False) -> bytes:
    payload = b"" if code == CLOSE_NO_STATUS else struct.pack("!H", code) + reason.encode()[:123]
    return encode_frame(OP_CLOSE, payload, mask=mask)


def _valid_close_code(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) \
        or 3000 <= code <= 4999


# -- the connection -----------------------------------------------------------------------


class WebSocketConnection:
    """One WebSocket connection's framing and close handshake, in either role."""

    __slots__ = ("_buffer", "_expect_masked", "_fragment_opcode", "_fragment_size",
                 "_fragments", "_mask", "_max_message", "_read_after_close", "state")

    def __init__(self, role: Role, *, max_message: int) -> None:
        self._expect_masked = role is Role.SERVER
        self._mask = role is Role.CLIENT
        self._max_message = max_message
        #: The start of a frame that has not fully arrived (a bytearray, so that a big
        #: frame arriving in many reads is appended to, not copied again each time).
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self._fragment_size = 0
        self._read_after_close = 0
        self.state = ConnectionState.OPEN

    # -- sending ----------------------------------------------------------------------------

    def send_message(self, payload: bytes, *, binary: bool) -> bytes:
        """A text (UTF-8 `payload`) or binary message; b"" once closing."""
        if self.state is not ConnectionState.OPEN:
            return b""
        return encode_frame(OP_BINARY if binary else OP_TEXT, payload, mask=self._mask)

    def ping(self, payload: bytes = b"") -> bytes:
        if self.state is not ConnectionState.OPEN:
            return b""
        return encode_frame(OP_PING, payload, mask=self._mask)

    def pong(self, payload: bytes) -> bytes:
        # Once our close is out only the peer's close matters (RFC 6455 5.5.1).
        if self.state is not ConnectionState.OPEN:
            return b""
        return encode_frame(OP_PONG, payload, mask=self._mask)

    def close(self, code: int, reason: str = "") -> bytes:
        """Our close frame (b"" if it was sent already). Answering the peer's close, echo
        its code (`CLOSE_NO_STATUS` becomes 1000)."""
        if self.state in (ConnectionState.LOCAL_CLOSING, ConnectionState.CLOSED):
            return b""
        if self.state is ConnectionState.REMOTE_CLOSING:
            self.state = ConnectionState.CLOSED
            code = CLOSE_NORMAL if code == CLOSE_NO_STATUS else code
        else:
            self.state = ConnectionState.LOCAL_CLOSING
        return encode_close(code, reason, mask=self._mask)

    # -- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Whole messages and control frames in `data` (with what came before it). After
        our close, data messages are dropped and only the peer's close is returned."""
        if self.state is ConnectionState.LOCAL_CLOSING:
            self._read_after_close += len(data)
            if self._read_after_close > MAX_READ_AFTER_CLOSE:
                raise ProtocolError(CLOSE_POLICY_VIOLATION, "no close frame after ours")
        elif self.state is not ConnectionState.OPEN:
            return []
        events = self._parse(data)
        if self.state is ConnectionState.LOCAL_CLOSING:
            events = [event for event in events if isinstance(event, CloseReceived)]
        for event in events:
            if isinstance(event, CloseReceived):
                self.state = (ConnectionState.CLOSED
                              if self.state is ConnectionState.LOCAL_CLOSING
                              else ConnectionState.REMOTE_CLOSING)
                return events[:events.index(event) + 1]
        return events

    @property
    def buffered(self) -> int:
        return len(self._buffer) + self._fragment_size

    def _parse(self, data: bytes) -> list[Event]:
        buffer: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        else:
            buffer = data
        events: list[Event] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            length = second & 0x7F
            position = offset + 2
            if length == 126:
                if end - position < 2:
                    break
                (length,) = struct.unpack_from("!H", buffer, position)
                position += 2
            elif length == 127:
                if end - position < 8:
                    break
                (length,) = struct.unpack_from("!Q", buffer, position)
                position += 8
            masked = second & 0x80
            if bool(masked) != self._expect_masked:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR,
                                    "client frames must be masked" if self._expect_masked
                                    else "server frames must not be masked")
            if first & 0x70:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "no extension was negotiated")
            opcode = first & 0x0F
            final = first & 0x80
            if opcode in _CONTROL_OPCODES:
                if length > 125 or not final:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "invalid control frame")
            elif self._fragment_size + length > self._max_message:
                raise ProtocolError(CLOSE_TOO_BIG,
                                    f"messages are limited to {self._max_message} bytes")
            if masked:
                if end - position < 4 + length:
                    break
                key = buffer[position:position + 4]
                position += 4
                payload = _xor(buffer[position:position + length], key)
            else:
                if end - position < length:
                    break
                payload = bytes(buffer[position:position + length])
            offset = position + length
            self._take(opcode, bool(final), payload, events)
        if buffer is self._buffer:
            del self._buffer[:offset]
        elif offset < end:
            self._buffer = bytearray(memoryview(buffer)[offset:])
        if len(self._buffer) > self._max_message + 14:
            raise ProtocolError(CLOSE_TOO_BIG, "frame too large")
        return events

    def _take(self, opcode: int, final: bool, payload: bytes, events: list[Event]) -> None:
        if opcode == OP_PING:
            events.append(Ping(payload))
            return
        if opcode == OP_PONG:
            events.append(Pong(payload))
            return
        if opcode == OP_CLOSE:
            events.append(_close_event(payload))
            return
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
            if len(self._fragments) >= MAX_FRAGMENTS:
                # Empty continuation frames cost memory and time without adding size.
                raise ProtocolError(CLOSE_POLICY_VIOLATION,
                                    f"a message may have at most {MAX_FRAGMENTS} fragments")
            self._fragments.append(payload)
            self._fragment_size += len(payload)
            if not final:
                return
            opcode, payload = self._fragment_opcode, b"".join(self._fragments)
            self._fragments, self._fragment_size = None, 0
        elif opcode in _DATA_OPCODES:
            if self._fragments is not None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a new message inside a fragmented one")
            if not final:
                self._fragments, self._fragment_opcode = [payload], opcode
                self._fragment_size = len(payload)
                return
        else:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if opcode == OP_TEXT:
            try:
                events.append(TextMessage(payload.decode()))
            except UnicodeDecodeError:
                raise ProtocolError(CLOSE_INVALID_DATA, "text frame is not UTF-8") from None
        else:
            events.append(BytesMessage(payload))


def _close_event(payload: bytes) -> CloseReceived:
    if not payload:
        return CloseReceived(CLOSE_NO_STATUS, "")
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if not _valid_close_code(code):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        return CloseReceived(code, payload[2:].decode())
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
