"""RFC 6455 WebSocket, sans-I/O: the opening handshake and the framing.

chatd serves its live stream with this instead of hypercorn's WebSocket support (which
goes through wsproto and an ASGI app): each idle connection then costs a fraction of the
memory, and a frame costs a header and a `send` instead of several objects, events and
task switches. It is deliberately narrow: no extensions (permessage-deflate would cost a
zlib context per socket), server frames are never fragmented, and the client role exists
for chatd's own clients and the benchmark (it masks what it sends).

`FrameReader` takes bytes as they arrive and returns whole messages; everything it
refuses raises `ProtocolError` with the close code to send (1002, 1007 or 1009). An
opening request that cannot be accepted raises the `ChatdError` to answer it with.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass
from http import HTTPStatus

from chatd.errors import (
    BadRequest,
    HeadersTooLarge,
    HttpVersionNotSupported,
    MethodNotAllowed,
    UpgradeRequired,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

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
#: The most a request head (request line and headers) may take.
MAX_REQUEST_HEAD = 16_384


class ProtocolError(Exception):
    """The peer broke the protocol; close the connection with `close_code`."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


# -- the opening handshake ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    #: Header names in lower case; repeated headers joined with ", ".
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return path_of(self.target)

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


def path_of(target: str) -> str:
    """The path of a request target, without its query."""
    return target.split("?", 1)[0]


def head_length(buffer: bytes | bytearray) -> int | None:
    """The length of the request head at the start of `buffer`, or None if incomplete."""
    end = buffer.find(b"\r\n\r\n")
    return None if end < 0 else end + 4


def check_head_size(size: int) -> None:
    """Refuse a request head (complete or still arriving) over `MAX_REQUEST_HEAD`."""
    if size > MAX_REQUEST_HEAD:
        raise HeadersTooLarge(f"the request head is over {MAX_REQUEST_HEAD} bytes")


def parse_request_head(head: bytes | bytearray) -> Request:
    check_head_size(len(head))
    try:
        text = bytes(head).decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise BadRequest("malformed request line") from None
    if version != "HTTP/1.1":
        raise HttpVersionNotSupported("WebSocket needs HTTP/1.1")
    headers: dict[str, str] = {}
    for line in header_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return Request(method, target, headers)


def _tokens(value: str) -> list[str]:
    return [token.strip().lower() for token in value.split(",") if token.strip()]


def check_upgrade(request: Request) -> str:
    """Validate an opening handshake; returns the client's Sec-WebSocket-Key."""
    headers = request.headers
    if request.method != "GET":
        raise MethodNotAllowed("a WebSocket opens with GET")
    if "websocket" not in _tokens(headers.get("upgrade", "")) or \
            "upgrade" not in _tokens(headers.get("connection", "")):
        raise UpgradeRequired("this route speaks WebSocket only (Upgrade: websocket)")
    if headers.get("sec-websocket-version") != "13":
        raise UpgradeRequired("only WebSocket version 13 is supported")
    key = headers.get("sec-websocket-key", "")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise BadRequest("Sec-WebSocket-Key must be 16 bytes in base64")
    return key


def requested_subprotocols(request: Request) -> list[str]:
    return [token.strip() for token in
            request.headers.get("sec-websocket-protocol", "").split(",") if token.strip()]


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def accept_response(key: str, subprotocol: str | None) -> bytes:
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_key(key)}"]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def error_response(status: int, body: bytes, *,
                   content_type: str = "application/json") -> bytes:
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n")
    if status == 426:
        head += "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    return head.encode() + b"\r\n" + body


def opening_request(host: str, target: str, key: str, subprotocols: list[str]) -> bytes:
    """The client side of the handshake."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


# -- framing -----------------------------------------------------------------------------


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


class FrameReader:
    """Turns received bytes into whole messages: a list of (opcode, payload) where text
    payloads are `str` (UTF-8 checked), binary ones `bytes`, a ping or pong its payload,
    and a close `(code, reason)`. Fragmented messages are reassembled; control frames may
    arrive between the fragments, as the RFC allows."""

    __slots__ = ("_buffer", "_expect_masked", "_fragment_opcode", "_fragment_size",
                 "_fragments", "_max_message")

    def __init__(self, *, max_message: int, expect_masked: bool = True) -> None:
        #: The start of a frame that has not fully arrived (a bytearray, so that a big
        #: frame arriving in many reads is appended to, not copied again each time).
        self._buffer = bytearray()
        self._expect_masked = expect_masked
        self._max_message = max_message
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self._fragment_size = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer) + self._fragment_size

    def feed(self, data: bytes) -> list[tuple[int, object]]:
        buffer: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        else:
            buffer = data
        messages: list[tuple[int, object]] = []
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
            self._take(opcode, bool(final), payload, messages)
        if buffer is self._buffer:
            del self._buffer[:offset]
        elif offset < end:
            self._buffer = bytearray(memoryview(buffer)[offset:])
        if len(self._buffer) > self._max_message + 14:
            raise ProtocolError(CLOSE_TOO_BIG, "frame too large")
        return messages

    def _take(self, opcode: int, final: bool, payload: bytes,
              messages: list[tuple[int, object]]) -> None:
        if opcode in _CONTROL_OPCODES:
            messages.append((opcode, _close_payload(payload) if opcode == OP_CLOSE else payload))
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
                messages.append((OP_TEXT, payload.decode()))
            except UnicodeDecodeError:
                raise ProtocolError(CLOSE_INVALID_DATA, "text frame is not UTF-8") from None
        else:
            messages.append((OP_BINARY, payload))


def _close_payload(payload: bytes) -> tuple[int, str]:
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if not _valid_close_code(code):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
