"""The sans-I/O WebSocket codec, checked against wsproto as an independent peer."""

from __future__ import annotations

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

from chatd.protocol import websocket as ws


def wsproto_client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def wsproto_server() -> Connection:
    return Connection(ConnectionType.SERVER)


def server(max_message: int = 1 << 20) -> ws.WebSocketConnection:
    return ws.WebSocketConnection(ws.Role.SERVER, max_message=max_message)


def test_reads_what_a_real_client_sends_byte_by_byte_and_in_bulk() -> None:
    client = wsproto_client()
    wire = b"".join([
        client.send(TextMessage("héllo")),
        client.send(BytesMessage(b"\x00\x01" * 40_000)),  # 64-bit length form
        client.send(TextMessage("x" * 300)),  # 16-bit length form
        client.send(Ping(b"p")),
        client.send(CloseConnection(1000, "bye")),
    ])
    expected = [ws.TextMessage("héllo"), ws.BytesMessage(b"\x00\x01" * 40_000),
                ws.TextMessage("x" * 300), ws.Ping(b"p"), ws.CloseReceived(1000, "bye")]
    assert server().receive_data(wire) == expected
    connection = server()
    got = []
    for n in range(len(wire)):
        got.extend(connection.receive_data(wire[n:n + 1]))
    assert got == expected
    assert connection.buffered == 0


def test_reassembles_fragments_with_a_control_frame_between() -> None:
    client = wsproto_client()
    wire = (client.send(Message(data="ab", message_finished=False))  # type: ignore[arg-type]
            + client.send(Ping(b"between"))
            + client.send(Message(data="cd", message_finished=True)))  # type: ignore[arg-type]
    assert server(100).receive_data(wire) == [ws.Ping(b"between"), ws.TextMessage("abcd")]


def test_what_the_server_writes_is_read_by_a_real_client() -> None:
    peer = wsproto_client()
    ours = server()
    wire = (ours.send_message("ünïcode".encode(), binary=False)
            + ours.send_message(b"z" * 70_000, binary=True)
            + ours.close(4008, "too slow"))
    peer.receive_data(wire)
    events = list(peer.events())
    assert isinstance(events[0], TextMessage) and events[0].data == "ünïcode"
    assert isinstance(events[1], BytesMessage) and events[1].data == b"z" * 70_000
    assert isinstance(events[2], CloseConnection) and events[2].code == 4008
    assert events[2].reason == "too slow"


def test_the_client_role_masks_and_a_real_server_reads_it() -> None:
    peer = wsproto_server()
    client = ws.WebSocketConnection(ws.Role.CLIENT, max_message=100)
    peer.receive_data(client.send_message(b"masked", binary=False))
    [event] = list(peer.events())
    assert isinstance(event, TextMessage) and event.data == "masked"
    # And in the client role, masked frames from a server are refused.
    with pytest.raises(ws.ProtocolError):
        client.receive_data(ws.encode_frame(ws.OP_TEXT, b"x", mask=True))


#: Violations and their close codes (ids by position: masked frames are random).
VIOLATIONS = [
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
    # Endless empty continuations cost time without adding size.
    (bytes([0x01, 0x80]) + b"\0\0\0\0" + (bytes([0x00, 0x80]) + b"\0\0\0\0") * 200,
     ws.CLOSE_POLICY_VIOLATION),
]


@pytest.mark.parametrize(("wire", "close_code"), VIOLATIONS,
                         ids=[f"{n}-{code}" for n, (_, code) in enumerate(VIOLATIONS)])
def test_protocol_violations_name_their_close_code(wire: bytes, close_code: int) -> None:
    with pytest.raises(ws.ProtocolError) as caught:
        server(100).receive_data(wire)
    assert caught.value.close_code == close_code


def test_fragments_add_up_against_the_limit() -> None:
    client = wsproto_client()
    connection = server(100)
    connection.receive_data(client.send(Message(data=b"x" * 60, message_finished=False)))  # type: ignore[arg-type]
    with pytest.raises(ws.ProtocolError) as caught:
        connection.receive_data(client.send(Message(data=b"x" * 60, message_finished=True)))  # type: ignore[arg-type]
    assert caught.value.close_code == ws.CLOSE_TOO_BIG


def test_the_close_handshake_from_either_side() -> None:
    client = wsproto_client()
    # The peer closes first: we answer with its code, once.
    ours = server()
    assert ours.receive_data(client.send(CloseConnection(4001, "bye"))) == [
        ws.CloseReceived(4001, "bye")]
    assert ours.state is ws.ConnectionState.REMOTE_CLOSING
    answer = ours.close(4001)
    assert answer == ws.encode_close(4001) and ours.state is ws.ConnectionState.CLOSED
    assert ours.close(1000) == b""
    # We close first: no pong, data dropped, then the peer's close ends it.
    ours = server()
    ours.close(4008, "too slow")
    assert ours.state is ws.ConnectionState.LOCAL_CLOSING
    assert ours.pong(b"p") == b"" and ours.send_message(b"x", binary=True) == b""
    client = wsproto_client()
    wire = client.send(TextMessage("late")) + client.send(Ping(b"p"))
    assert ours.receive_data(wire) == []
    assert ours.receive_data(client.send(CloseConnection(1000))) == [
        ws.CloseReceived(1000, "")]
    assert ours.state is ws.ConnectionState.CLOSED


def test_a_peer_that_never_closes_after_ours_is_cut_off() -> None:
    ours = server()
    ours.close(1000)
    ping = ws.encode_frame(ws.OP_PING, b"p" * 125, mask=True)
    with pytest.raises(ws.ProtocolError) as caught:
        for _ in range(ws.MAX_READ_AFTER_CLOSE // len(ping) + 2):
            ours.receive_data(ping)
    assert caught.value.close_code == ws.CLOSE_POLICY_VIOLATION


def test_close_reason_is_truncated_to_fit_a_control_frame() -> None:
    client = ws.WebSocketConnection(ws.Role.CLIENT, max_message=10)
    [closed] = client.receive_data(ws.encode_close(4001, "x" * 500))
    assert closed == ws.CloseReceived(4001, "x" * 123)
    client = ws.WebSocketConnection(ws.Role.CLIENT, max_message=10)
    assert client.receive_data(ws.encode_close(ws.CLOSE_NO_STATUS)) == [
        ws.CloseReceived(ws.CLOSE_NO_STATUS, "")]
