"""The /ws transport at the byte level: handshakes, framing violations, control frames."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from chatd.protocol import handshake
from chatd.protocol import websocket as ws
from chatd.server import RunningServer
from tests.helpers import new_account


async def _open(server: RunningServer) -> trio.SocketStream:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return await trio.open_tcp_stream(parts.hostname, parts.port)


async def _read_head(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    data = b""
    with trio.fail_after(5):
        while (length := handshake.head_length(data)) is None:
            chunk = await stream.receive_some()
            assert chunk, data
            data += chunk
    return data[:length], data[length:]


def _client() -> ws.WebSocketConnection:
    return ws.WebSocketConnection(ws.Role.CLIENT, max_message=1 << 20)


@asynccontextmanager
async def raw_socket(server: RunningServer, token: str) -> AsyncIterator[
        tuple[trio.SocketStream, ws.WebSocketConnection]]:
    stream = await _open(server)
    async with stream:
        await stream.send_all(handshake.opening_request("chatd", f"/ws?token={token}",
                                                        handshake.new_key(), []))
        head, rest = await _read_head(stream)
        assert head.startswith(b"HTTP/1.1 101 "), head
        reader = _client()
        assert reader.receive_data(rest) == []
        yield stream, reader


async def _next(stream: trio.SocketStream, reader: ws.WebSocketConnection) -> ws.Event:
    with trio.fail_after(5):
        while True:
            data = await stream.receive_some()
            assert data, "the server hung up"
            events = reader.receive_data(data)
            if events:
                return events[0]


async def test_a_plain_get_of_ws_is_told_to_upgrade(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/ws")
        assert response.status_code == 426
        assert response.json()["error"]["code"] == "upgrade_required"
        assert response.headers["upgrade"] == "websocket"
        # The same port keeps serving REST.
        assert (await http.get("/healthz")).status_code == 200


async def test_protocol_violations_close_only_that_connection(server: RunningServer,
        http: httpx.AsyncClient) -> None:
    account = await new_account(http)
    for bad, close_code in ((ws.encode_frame(ws.OP_TEXT, b"{}"), ws.CLOSE_PROTOCOL_ERROR),
                            (ws.encode_frame(ws.OP_TEXT, b"\xff", mask=True),
                             ws.CLOSE_INVALID_DATA),
                            (bytes([0x82, 0xFF]) + (1 << 40).to_bytes(8, "big"),
                             ws.CLOSE_TOO_BIG)):
        async with raw_socket(server, account.token) as (bystander, bystander_reader), \
                raw_socket(server, account.token) as (stream, reader):
            await stream.send_all(bad)
            closed = await _next(stream, reader)
            assert isinstance(closed, ws.CloseReceived) and closed.code == close_code
            await bystander.send_all(ws.encode_frame(
                ws.OP_TEXT, b'{"type":"ping","req":"still"}', mask=True))
            answer = await _next(bystander, bystander_reader)
            assert isinstance(answer, ws.TextMessage)
            assert json.loads(answer.data) == {"type": "pong", "req": "still"}


async def test_pings_get_pongs_and_a_close_gets_its_echo(server: RunningServer,
        http: httpx.AsyncClient) -> None:
    account = await new_account(http)
    async with raw_socket(server, account.token) as (stream, reader):
        await stream.send_all(ws.encode_frame(ws.OP_PING, b"are you there", mask=True))
        assert await _next(stream, reader) == ws.Pong(b"are you there")
        # A frame split over several writes is still one frame.
        frame = ws.encode_frame(ws.OP_TEXT, b'{"type":"ping"}', mask=True)
        for n in range(len(frame)):
            await stream.send_all(frame[n:n + 1])
        answer = await _next(stream, reader)
        assert isinstance(answer, ws.TextMessage)
        assert json.loads(answer.data) == {"type": "pong"}
        await stream.send_all(ws.encode_close(ws.CLOSE_NORMAL, "done", mask=True))
        assert await _next(stream, reader) == ws.CloseReceived(ws.CLOSE_NORMAL, "")
        with trio.fail_after(5):
            assert await stream.receive_some() == b""  # and the server hangs up


async def test_a_client_that_never_finishes_its_request_blocks_nobody(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    stalled = await _open(server)
    async with stalled:
        await stalled.send_all(b"GET /ws?tok")  # and nothing more
        account = await new_account(http)
        async with raw_socket(server, account.token):
            pass
        assert (await http.get("/healthz")).status_code == 200


async def test_frames_sent_with_the_opening_request_are_read(server: RunningServer,
        http: httpx.AsyncClient) -> None:
    account = await new_account(http)
    stream = await _open(server)
    async with stream:
        # A client may pipeline its first frames behind the request in one write.
        await stream.send_all(
            handshake.opening_request("chatd", f"/ws?token={account.token}",
                                      handshake.new_key(), [])
            + ws.encode_frame(ws.OP_TEXT, b'{"type":"ping","req":"early"}', mask=True))
        head, rest = await _read_head(stream)
        assert head.startswith(b"HTTP/1.1 101 ")
        reader = _client()
        events = reader.receive_data(rest)
        answer = events[0] if events else await _next(stream, reader)
        assert isinstance(answer, ws.TextMessage)
        assert json.loads(answer.data) == {"type": "pong", "req": "early"}


@pytest.mark.parametrize(("request_head", "status"), [
    (b"GET /ws HTTP/1.1\r\nX-Padding: " + b"x" * 20_000 + b"\r\n\r\n", 431),
    (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: not-base64!\r\n\r\n", 400),
    (b"POST /ws HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 400),  # no Host: not HTTP/1.1
    (b"GET /ws HTTP/1.0\r\n\r\n", 505),
])
async def test_bad_opening_requests_get_an_http_error_with_a_json_body(
        server: RunningServer, request_head: bytes, status: int) -> None:
    stream = await _open(server)
    async with stream:
        await stream.send_all(request_head)
        received = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                received += chunk  # the server answers, then hangs up
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert set(json.loads(body)["error"]) == {"code", "message"}
