"""REST at the edges of HTTP: request bodies that are slow, late, too large or never come.

Whatever the body does, the client gets chatd's JSON error and then either a connection
it can go on using or a clean close, never a connection that silently stops answering;
and the server logs no traceback for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig

from chatd.server import RunningServer
from chatd.web import app as web_app
from tests.conftest import ServerFactory

#: Loggers the server writes to (the test's own client logs through httpx/httpcore).
SERVER_LOGGERS = ("chatd", "hypercorn", "quart")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        error = json.loads(self.body)["error"]
        assert isinstance(error["message"], str) and error["message"], error
        code: str = error["code"]
        return code


@dataclass
class RawConnection:
    """An HTTP/1.1 client on a plain socket, so the test decides when each byte goes."""

    stream: trio.SocketStream
    buffer: bytes = field(default=b"")

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bool:
        try:
            data = await self.stream.receive_some(65_536)
        except trio.BrokenResourceError:  # a reset is a close too
            return False
        self.buffer += data
        return bool(data)

    async def answer(self) -> Answer | None:
        """The next response, or None if the server closed the connection instead."""
        while b"\r\n\r\n" not in self.buffer:
            if not await self._more():
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not await self._more():
                return None
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(int(status_line.split(" ")[1]), headers, body)

    async def expect_close(self, within: float) -> None:
        """Read until the server closes the connection; fail if it has not by `within`."""
        with trio.move_on_after(within) as waited:
            while await self._more():
                pass
        assert not waited.cancelled_caught, f"the server kept the connection open {within} s"


async def connect(server: RunningServer) -> RawConnection:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return RawConnection(await trio.open_tcp_stream(parts.hostname, parts.port))


def post_head(path: str, length: int, method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: chatd\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: chatd\r\n\r\n"


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO)
    yield caplog


def server_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records
            if record.name.split(".")[0] in SERVER_LOGGERS
            and not record.getMessage().startswith(("serving ", "stopped cleanly"))]


def assert_no_traceback(caplog: pytest.LogCaptureFixture, most_lines: int) -> None:
    records = server_records(caplog)
    shown = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in records]
    assert not [r for r in records if r.exc_info], shown
    assert not [r for r in records if r.levelno >= logging.WARNING], shown
    assert len(records) <= most_lines, shown


@pytest.fixture
async def slow_server(start_server: ServerFactory,
                      monkeypatch: pytest.MonkeyPatch) -> RunningServer:
    """A shard whose routes give a request body 0.3 s and an early answer 0.2 s."""
    monkeypatch.setattr(web_app, "BODY_TIMEOUT", 0.3)
    monkeypatch.setattr(web_app, "BODY_DRAIN_TIMEOUT", 0.2)
    return await start_server()


# --- A: a body slower than the body timeout -----------------------------------------


@pytest.mark.parametrize("pace", ["stalls", "dribbles"])
async def test_a_slow_body_gets_a_json_408_and_a_clean_close(
        slow_server: RunningServer, server_log: pytest.LogCaptureFixture, pace: str) -> None:
    body = b'{"handle": "slow", "password": "correct horse battery", "display_name": "S"}'
    connection = await connect(slow_server)
    async with connection.stream:
        await connection.send(post_head("/register", len(body)) + body[:5])
        with trio.fail_after(5):
            if pace == "dribbles":  # one byte every 50 ms, never all of it in time
                async with trio.open_nursery() as nursery:
                    async def dribble() -> None:
                        for byte in body[5:40]:
                            try:
                                await connection.send(bytes([byte]))
                            except trio.BrokenResourceError:
                                return
                            await trio.sleep(0.05)
                    nursery.start_soon(dribble)
                    answer = await connection.answer()
                    nursery.cancel_scope.cancel()
            else:
                answer = await connection.answer()
            assert answer is not None, "the server closed without answering"
            assert answer.status == 408
            assert answer.error_code() == "request_timeout"
            # The body was never read: the connection cannot be reused, and says so.
            assert answer.headers.get("connection") == "close"
            await connection.expect_close(within=2)
    await trio.sleep(0.1)  # anything the server logs about it is logged by now
    assert_no_traceback(server_log, most_lines=1)


async def test_a_slow_body_over_http2_gets_a_408_and_the_connection_goes_on(
        slow_server: RunningServer, server_log: pytest.LogCaptureFixture) -> None:
    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"handle": '
        await trio.sleep(0.6)  # past the body timeout; the rest comes after the answer
        yield b'"late"}'

    async with httpx.AsyncClient(base_url=slow_server.url, http1=False, http2=True,
                                 timeout=5) as http:
        response = await http.post("/register", content=slow_body(),
                                   headers={"Content-Length": "18"})
        assert response.http_version == "HTTP/2"
        assert response.status_code == 408
        assert response.json()["error"]["code"] == "request_timeout"
        # Data for the answered stream must not end the connection's other streams.
        assert (await http.get("/healthz")).status_code == 200
    await trio.sleep(0.1)
    assert_no_traceback(server_log, most_lines=1)


# --- B: an error answered before the body has arrived --------------------------------


EARLY_ERRORS = [  # answered from the request line and headers, before the body is read
    ("POST", "/nonexistent", 404),
    ("PUT", "/healthz", 405),
    ("POST", "/messages/send", 401),
]


@pytest.mark.parametrize("drain", ["waits for the body", "answers at once"])
async def test_an_early_error_never_stalls_the_keep_alive_connection(
        server: RunningServer, server_log: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, drain: str) -> None:
    """300 times: headers, the body 2 ms later, then the next request on the same
    connection. Before the fix about one in ten such connections stopped answering."""
    if drain == "answers at once":
        # Without the wait for the body the connection cannot be reused; it must then
        # be closed cleanly, with the answer saying so.
        monkeypatch.setattr(web_app, "BODY_DRAIN_TIMEOUT", 0.0)
    body = b'{"conversation_id": "1", "client_msg_id": "x", "body": "hi"}'
    answered = closed = 0
    for attempt in range(300):
        method, path, status = EARLY_ERRORS[attempt % len(EARLY_ERRORS)]
        connection = await connect(server)
        async with connection.stream:
            with trio.move_on_after(2) as waited:
                await connection.send(post_head(path, len(body), method))
                await trio.sleep(0.002)
                with contextlib.suppress(trio.BrokenResourceError):
                    # If it closed already, what it answered is still there to read.
                    await connection.send(body + HEALTHZ)
                first = await connection.answer()
                assert first is not None, f"attempt {attempt}: closed without an answer"
                assert first.status == status, (attempt, first)
                assert first.error_code(), (attempt, first)
                second = await connection.answer()
                if second is None:
                    assert first.headers.get("connection") == "close", (
                        f"attempt {attempt}: closed after an answer that did not say so")
                    closed += 1
                else:
                    assert second.status == 200, (attempt, second)
                    answered += 1
            assert not waited.cancelled_caught, (
                f"attempt {attempt} ({method} {path}): no answer and no close within 2 s")
    if drain == "waits for the body":
        assert answered == 300
    else:
        assert answered + closed == 300
    assert_no_traceback(server_log, most_lines=0)


async def test_an_early_error_over_http2_leaves_the_connection_usable(
        server: RunningServer, server_log: pytest.LogCaptureFixture) -> None:
    async def late_body() -> AsyncIterator[bytes]:
        yield b'{"a": '
        await trio.sleep(0.002)
        yield b"1}"

    async with httpx.AsyncClient(base_url=server.url, http1=False, http2=True,
                                 timeout=5) as http:
        for _ in range(20):
            response = await http.post("/nonexistent", content=late_body(),
                                       headers={"Content-Length": "8"})
            assert response.status_code == 404
            assert (await http.get("/healthz")).status_code == 200
    assert_no_traceback(server_log, most_lines=0)


async def test_a_body_that_never_comes_gets_its_answer_and_a_clean_close(
        slow_server: RunningServer, server_log: pytest.LogCaptureFixture) -> None:
    connection = await connect(slow_server)
    async with connection.stream:
        await connection.send(post_head("/nonexistent", 100))
        with trio.fail_after(3):
            answer = await connection.answer()
            assert answer is not None
            assert answer.status == 404 and answer.error_code() == "not_found"
            assert answer.headers.get("connection") == "close"
            await connection.expect_close(within=2)
    assert_no_traceback(server_log, most_lines=0)


async def test_an_oversized_body_gets_413_and_a_clean_close(
        server: RunningServer, server_log: pytest.LogCaptureFixture) -> None:
    limit = server.services.config.server.max_request_bytes
    connection = await connect(server)
    async with connection.stream:
        await connection.send(post_head("/register", limit + 1) + b"x" * 65_536)
        with trio.fail_after(3):
            answer = await connection.answer()
            assert answer is not None
            assert answer.status == 413 and answer.error_code() == "payload_too_large"
            assert answer.headers.get("connection") == "close"
            await connection.expect_close(within=2)
    assert_no_traceback(server_log, most_lines=0)


async def test_an_idle_keep_alive_connection_is_closed_after_a_request(
        start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keep-alive timer is re-armed after each request (it was cancelled with the
    request's task, so an idle connection was held open until the client left)."""
    monkeypatch.setattr(HypercornConfig, "keep_alive_timeout", 0.3)
    running = await start_server()
    connection = await connect(running)
    async with connection.stream:
        await connection.send(HEALTHZ)
        with trio.fail_after(3):
            answer = await connection.answer()
            assert answer is not None and answer.status == 200
            await connection.expect_close(within=2)
