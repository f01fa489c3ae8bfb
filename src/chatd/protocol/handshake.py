"""The WebSocket opening handshake (RFC 6455 section 4), sans-I/O, for both roles.

The server side parses the opening request with h11 and checks it is a version-13
upgrade; what it refuses raises `HandshakeError` naming the problem, which the web layer
answers with the matching HTTP status (this module knows no HTTP errors of its own). The
client side builds the request and checks the answer.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
from dataclasses import dataclass
from http import HTTPStatus

import h11

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: The most a request head (request line and headers) may take.
MAX_REQUEST_HEAD = 16_384


class HandshakeProblem(enum.Enum):
    MALFORMED = "the request is not valid HTTP/1.1"
    HEAD_TOO_LARGE = f"the request head is over {MAX_REQUEST_HEAD} bytes"
    HTTP_VERSION = "WebSocket needs HTTP/1.1"
    METHOD = "a WebSocket opens with GET"
    NOT_AN_UPGRADE = "this route speaks WebSocket only (Upgrade: websocket)"
    WEBSOCKET_VERSION = "only WebSocket version 13 is supported"
    BAD_KEY = "Sec-WebSocket-Key must be 16 bytes in base64"
    REFUSED = "the server refused the WebSocket"


class HandshakeError(Exception):
    def __init__(self, problem: HandshakeProblem, detail: str = "") -> None:
        super().__init__(detail or problem.value)
        self.problem = problem
        self.message = detail or problem.value


@dataclass(frozen=True, slots=True)
class OpeningRequest:
    """A valid opening request."""

    target: str
    #: Header names in lower case; repeated headers joined with ", ".
    headers: dict[str, str]
    key: str
    subprotocols: tuple[str, ...]

    @property
    def path(self) -> str:
        return path_of(self.target)

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


def path_of(target: str) -> str:
    """The path of a request target, without its query."""
    return target.split("?", 1)[0]


# -- server side --------------------------------------------------------------------------


def head_length(buffer: bytes | bytearray) -> int | None:
    """The length of the request head at the start of `buffer`, or None if incomplete;
    raises `HandshakeError` once an incomplete head is over `MAX_REQUEST_HEAD`."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_REQUEST_HEAD:
            raise HandshakeError(HandshakeProblem.HEAD_TOO_LARGE)
        return None
    return end + 4


def read_opening_request(head: bytes) -> OpeningRequest:
    """Parse and check a complete request head (as `head_length` delimits it)."""
    if len(head) > MAX_REQUEST_HEAD:
        raise HandshakeError(HandshakeProblem.HEAD_TOO_LARGE)
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    parser.receive_data(head)
    try:
        event = parser.next_event()
    except h11.RemoteProtocolError as exc:
        raise HandshakeError(HandshakeProblem.MALFORMED, f"malformed request: {exc}") from None
    if not isinstance(event, h11.Request):
        raise HandshakeError(HandshakeProblem.MALFORMED)
    if event.http_version != b"1.1":
        raise HandshakeError(HandshakeProblem.HTTP_VERSION)
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if event.method != b"GET":
        raise HandshakeError(HandshakeProblem.METHOD)
    if "websocket" not in _tokens(headers.get("upgrade", "")) or \
            "upgrade" not in _tokens(headers.get("connection", "")):
        raise HandshakeError(HandshakeProblem.NOT_AN_UPGRADE)
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError(HandshakeProblem.WEBSOCKET_VERSION)
    key = headers.get("sec-websocket-key", "")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise HandshakeError(HandshakeProblem.BAD_KEY)
    subprotocols = tuple(token.strip() for token in
                         headers.get("sec-websocket-protocol", "").split(",") if token.strip())
    return OpeningRequest(event.target.decode("latin-1"), headers, key, subprotocols)


def _tokens(value: str) -> list[str]:
    return [token.strip().lower() for token in value.split(",") if token.strip()]


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def accept_response(key: str, subprotocol: str | None) -> bytes:
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_key(key)}"]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def refusal_response(status: int, body: bytes, *, content_type: str = "application/json",
                     upgrade_hint: bool = False) -> bytes:
    """An HTTP answer refusing the upgrade; the connection closes after it."""
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n")
    if upgrade_hint:
        head += "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    return head.encode() + b"\r\n" + body


# -- client side --------------------------------------------------------------------------


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def opening_request(host: str, target: str, key: str, subprotocols: list[str],
                    headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def check_accept(head: bytes, key: str) -> str | None:
    """Check the server's answer to our opening request; returns the chosen subprotocol."""
    parser = h11.Connection(h11.CLIENT)
    # h11 accepts a 101 only as the answer to an upgrade it saw proposed.
    parser.send(h11.Request(method="GET", target="/", headers=[
        ("Host", "x"), ("Connection", "Upgrade"), ("Upgrade", "websocket")]))
    parser.receive_data(head)
    try:
        event = parser.next_event()
    except h11.RemoteProtocolError as exc:
        raise HandshakeError(HandshakeProblem.MALFORMED, f"malformed answer: {exc}") from None
    if not isinstance(event, h11.InformationalResponse | h11.Response) or \
            event.status_code != 101:
        status = getattr(event, "status_code", "?")
        raise HandshakeError(HandshakeProblem.REFUSED, f"the server answered {status}")
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers}
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise HandshakeError(HandshakeProblem.REFUSED, "wrong Sec-WebSocket-Accept")
    return headers.get("sec-websocket-protocol")
