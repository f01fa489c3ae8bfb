"""The sans-I/O WebSocket codec, checked against wsproto as an independent peer."""

from __future__ import annotations

import pytest
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)

from chatd.errors import ChatdError
from chatd.protocol import websocket as ws


def wsproto_client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def wsproto_server() -> Connection:
    return Connection(ConnectionType.SERVER)


def test_reads_what_a_real_client_sends_byte_by_byte_and_in_bulk() -> None:
    client = wsproto_client()
    wire = b"".join([
        client.send(TextMessage("héllo")),
        client.send(BytesMessage(b"\x00\x01" * 40_000)),  # 64-bit length form
        client.send(TextMessage("x" * 300)),  # 16-bit length form
        client.send(Ping(b"p")),
        client.send(CloseConnection(1000, "bye")),
    ])
    expected = [(ws.OP_TEXT, "héllo"), (ws.OP_BINARY, b"\x00\x01" * 40_000),
                (ws.OP_TEXT, "x" * 300), (ws.OP_PING, b"p"), (ws.OP_CLOSE, (1000, "bye"))]
    assert ws.FrameReader(max_message=1 << 20).feed(wire) == expected
    reader = ws.FrameReader(max_message=1 << 20)
    got = []
    for n in range(len(wire)):
        got.extend(reader.feed(wire[n:n + 1]))
    assert got == expected
    assert reader.buffered == 0


def test_reassembles_fragments_with_a_control_frame_between() -> None:
    client = wsproto_client()
    wire = (client.send(Message(data="ab", message_finished=False))  # type: ignore[arg-type]
            + client.send(Ping(b"between"))
            + client.send(Message(data="cd", message_finished=True)))  # type: ignore[arg-type]
    assert ws.FrameReader(max_message=100).feed(wire) == [(ws.OP_PING, b"between"),
                                                         (ws.OP_TEXT, "abcd")]


def test_what_the_server_writes_is_read_by_a_real_client() -> None:
    peer = wsproto_client()
    wire = (ws.encode_frame(ws.OP_TEXT, "ünïcode".encode())
            + ws.encode_frame(ws.OP_BINARY, b"z" * 70_000)
            + ws.encode_close(4008, "too slow"))
    peer.receive_data(wire)
    events = list(peer.events())
    assert isinstance(events[0], TextMessage) and events[0].data == "ünïcode"
    assert isinstance(events[1], BytesMessage) and events[1].data == b"z" * 70_000
    assert isinstance(events[2], CloseConnection) and events[2].code == 4008
    assert events[2].reason == "too slow"


def test_masked_client_frames_are_read_by_a_real_server() -> None:
    peer = wsproto_server()
    peer.receive_data(ws.encode_frame(ws.OP_TEXT, b"masked", mask=True))
    [event] = list(peer.events())
    assert isinstance(event, TextMessage) and event.data == "masked"
    # And our own reader in the client role refuses masked server frames.
    with pytest.raises(ws.ProtocolError):
        ws.FrameReader(max_message=100, expect_masked=False).feed(
            ws.encode_frame(ws.OP_TEXT, b"x", mask=True))


@pytest.mark.parametrize(("wire", "close_code"), [
    (ws.encode_frame(ws.OP_TEXT, b"unmasked"), ws.CLOSE_PROTOCOL_ERROR),
    (ws.encode_frame(ws.OP_TEXT, b"\xff\xfe", mask=True), ws.CLOSE_INVALID_DATA),
    (ws.encode_frame(0x3, b"", mask=True), ws.CLOSE_PROTOCOL_ERROR),  # reserved opcode
    (bytes([0x80 | 0x40 | ws.OP_TEXT, 0x80]) + b"\0\0\0\0", ws.CLOSE_PROTOCOL_ERROR),  # RSV1
    (bytes([ws.OP_PING, 0x80]) + b"\0\0\0\0", ws.CLOSE_PROTOCOL_ERROR),  # fragmented ping
    (bytes([0x80 | ws.OP_CONTINUATION, 0x80]) + b"\0\0\0\0", ws.CLOSE_PROTOCOL_ERROR),
    (ws.encode_frame(ws.OP_CLOSE, b"\x03", mask=True), ws.CLOSE_PROTOCOL_ERROR),
    (ws.encode_frame(ws.OP_CLOSE, b"\x00\x05", mask=True), ws.CLOSE_PROTOCOL_ERROR),
    (ws.encode_frame(ws.OP_BINARY, b"x" * 101, mask=True), ws.CLOSE_TOO_BIG),
    # A header announcing 2**62 bytes is refused before any of it is buffered.
    (bytes([0x80 | ws.OP_BINARY, 0x80 | 127]) + (1 << 62).to_bytes(8, "big"), ws.CLOSE_TOO_BIG),
])
def test_protocol_violations_name_their_close_code(wire: bytes, close_code: int) -> None:
    with pytest.raises(ws.ProtocolError) as caught:
        ws.FrameReader(max_message=100).feed(wire)
    assert caught.value.close_code == close_code


def test_fragments_add_up_against_the_limit() -> None:
    client = wsproto_client()
    reader = ws.FrameReader(max_message=100)
    reader.feed(client.send(Message(data=b"x" * 60, message_finished=False)))  # type: ignore[arg-type]
    with pytest.raises(ws.ProtocolError) as caught:
        reader.feed(client.send(Message(data=b"x" * 60, message_finished=True)))  # type: ignore[arg-type]
    assert caught.value.close_code == ws.CLOSE_TOO_BIG


def test_the_handshake_matches_the_rfc_example_and_wsproto() -> None:
    # RFC 6455 section 1.3.
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    peer = WSConnection(ConnectionType.CLIENT)
    opening = peer.send(Request(host="h", target="/ws?token=t", subprotocols=["chatd.msgpack"]))
    length = ws.head_length(opening)
    assert length == len(opening)
    request = ws.parse_request_head(opening)
    assert request.path == "/ws" and request.query == "token=t"
    key = ws.check_upgrade(request)
    assert ws.requested_subprotocols(request) == ["chatd.msgpack"]
    peer.receive_data(ws.accept_response(key, "chatd.msgpack"))
    [accepted] = list(peer.events())
    assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "chatd.msgpack"


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n", 426),  # no Upgrade
    (b"POST /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 405),
    (b"GET /ws HTTP/1.0\r\n\r\n", 505),
    (b"GET /ws\r\n\r\n", 400),
    (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
     b"Sec-WebSocket-Version: 8\r\n\r\n", 426),
    (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n", 400),
    (b"GET /ws HTTP/1.1\r\n bad header\r\n\r\n", 400),
])
def test_bad_opening_requests_get_an_http_status(head: bytes, status: int) -> None:
    with pytest.raises(ChatdError) as caught:
        ws.check_upgrade(ws.parse_request_head(head))
    assert caught.value.status == status


def test_close_reason_is_truncated_to_fit_a_control_frame() -> None:
    frame = ws.encode_close(4001, "x" * 500)
    [(opcode, (code, reason))] = ws.FrameReader(  # type: ignore[misc]
        max_message=10, expect_masked=False).feed(frame)
    assert opcode == ws.OP_CLOSE and code == 4001 and len(reason) == 123
    assert ws.FrameReader(max_message=10, expect_masked=False).feed(
        ws.encode_close(ws.CLOSE_NO_STATUS)) == [(ws.OP_CLOSE, (ws.CLOSE_NO_STATUS, ""))]


def test_an_oversized_request_head_is_refused_whole_or_in_part() -> None:
    head = b"GET /ws HTTP/1.1\r\nX-Padding: " + b"x" * ws.MAX_REQUEST_HEAD + b"\r\n\r\n"
    with pytest.raises(ChatdError) as caught:
        ws.parse_request_head(head)
    assert caught.value.status == 431
    with pytest.raises(ChatdError):
        ws.check_head_size(ws.MAX_REQUEST_HEAD + 1)
    ws.check_head_size(ws.MAX_REQUEST_HEAD)
