"""The opening handshake, checked against wsproto as the independent peer."""

from __future__ import annotations

import pytest
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Request

from chatd.protocol import handshake
from chatd.protocol.handshake import HandshakeError, HandshakeProblem


def test_the_handshake_matches_the_rfc_example_and_wsproto() -> None:
    # RFC 6455 section 1.3.
    assert handshake.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    peer = WSConnection(ConnectionType.CLIENT)
    opening = peer.send(Request(host="h", target="/ws?token=t", subprotocols=["chatd.msgpack"]))
    assert handshake.head_length(opening) == len(opening)
    request = handshake.read_opening_request(opening)
    assert request.path == "/ws" and request.query == "token=t"
    assert request.subprotocols == ("chatd.msgpack",)
    peer.receive_data(handshake.accept_response(request.key, "chatd.msgpack"))
    [accepted] = list(peer.events())
    assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "chatd.msgpack"


def test_our_client_side_against_a_real_server() -> None:
    server = WSConnection(ConnectionType.SERVER)
    key = handshake.new_key()
    server.receive_data(handshake.opening_request("h", "/ws", key, ["chatd.json"]))
    [request] = list(server.events())
    assert isinstance(request, Request) and request.subprotocols == ["chatd.json"]
    answer = server.send(AcceptConnection(subprotocol="chatd.json"))
    assert handshake.check_accept(answer, key) == "chatd.json"
    with pytest.raises(HandshakeError):
        handshake.check_accept(answer, handshake.new_key())  # someone else's key
    with pytest.raises(HandshakeError):
        handshake.check_accept(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n", key)


@pytest.mark.parametrize(("head", "problem"), [
    (b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n", HandshakeProblem.NOT_AN_UPGRADE),
    (b"POST /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Content-Length: 0\r\n\r\n", HandshakeProblem.METHOD),
    (b"GET /ws HTTP/1.0\r\n\r\n", HandshakeProblem.HTTP_VERSION),
    (b"GET /ws\r\n\r\n", HandshakeProblem.MALFORMED),
    (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
     b"Sec-WebSocket-Version: 8\r\n\r\n", HandshakeProblem.WEBSOCKET_VERSION),
    (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
     HandshakeProblem.BAD_KEY),
    (b"GET /ws HTTP/1.1\r\n bad header\r\n\r\n", HandshakeProblem.MALFORMED),
])
def test_bad_opening_requests_name_their_problem(head: bytes,
                                                 problem: HandshakeProblem) -> None:
    with pytest.raises(HandshakeError) as caught:
        handshake.read_opening_request(head)
    assert caught.value.problem is problem


def test_an_oversized_request_head_is_refused_whole_or_in_part() -> None:
    head = b"GET /ws HTTP/1.1\r\nX-Padding: " + b"x" * handshake.MAX_REQUEST_HEAD + b"\r\n\r\n"
    with pytest.raises(HandshakeError) as caught:
        handshake.read_opening_request(head)
    assert caught.value.problem is HandshakeProblem.HEAD_TOO_LARGE
    with pytest.raises(HandshakeError):
        handshake.head_length(b"GET / HTTP/1.1\r\n" + b"x" * handshake.MAX_REQUEST_HEAD)
    assert handshake.head_length(b"GET / HTTP/1.1\r\n") is None
