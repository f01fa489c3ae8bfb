"""REST through hypercorn: a client that stops reading is cut off, not waited for."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import trio

from tests.conftest import ServerFactory
from tests.helpers import new_account


async def test_a_rest_client_that_reads_nothing_is_aborted(start_server: ServerFactory) -> None:
    running = await start_server(server={"send_timeout": 0.5})
    async with httpx.AsyncClient(base_url=running.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        conv = (await alice.post("/conversations/direct", {"user_id": bob.user_id})).json()[
            "conversation_id"]
        for n in range(100):  # ~6 MB of history: far more than the socket buffers hold
            response = await alice.post("/messages/send", {
                "conversation_id": conv, "client_msg_id": f"big-{n}",
                "content_type": "text/plain", "body": f"{n:03d}" + "x" * 60_000})
            assert response.status_code == 201, response.text
        full = await alice.get(f"/messages/{conv}", params={"limit": 100})
        assert len(full.content) > 6_000_000

    parts = urlsplit(running.url)
    stalled = trio.socket.socket()
    # A small receive window, so the server's writes stall almost at once.
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with stalled:
        await stalled.connect((parts.hostname, parts.port))
        await stalled.send(
            f"GET /messages/{conv}?limit=100 HTTP/1.1\r\nHost: chatd\r\n"
            f"Authorization: Bearer {alice.token}\r\n\r\n".encode())
        await trio.sleep(2)  # read nothing for well over send_timeout
        received = 0
        with trio.fail_after(10):
            while True:
                try:
                    data = await stalled.recv(1 << 20)
                except ConnectionResetError:
                    break
                if not data:
                    break
                received += len(data)
    # The server gave up on the write: the response was cut short, not finished later.
    assert received < len(full.content)
