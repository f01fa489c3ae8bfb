"""The direct download path (web/media_downloads.py): it answers exactly as the quart
route does, keeps connections alive, and hands anything else to hypercorn."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import trio

from chatd.server import RunningServer
from chatd.web.media_downloads import is_media_download, parse_head
from tests.helpers import Account, new_account
from tests.media_files import png, random_bytes


@pytest.mark.parametrize(("head", "served"), [
    (b"GET /media/12 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1", True),
    (b"HEAD /media/12/thumbnail?size=96 HTTP/1.0", True),
    (b"GET /media/12/other HTTP/1.1", False),
    (b"POST /media/12 HTTP/1.1", False),
    (b"GET /media/12 HTTP/2", False),
    (b"GET /media/12 HTTP/1.1\r\nContent-Length: 5", False),       # a body
    (b"GET /media/12 HTTP/1.1\r\nTransfer-Encoding: chunked", False),
    (b"GET /media/12 HTTP/1.1\r\nRange: a\r\nRange: b", False),    # repeated
    (b"GET /media/12 HTTP/1.1\r\nX: 1\r\n  folded", False),
    (b"GET /media/12 HTTP/1.1\r\nbad header", False),
    (b"GET /media/12?sig=%ff HTTP/1.1", False),                   # not UTF-8
])
def test_which_requests_are_served_here(head: bytes, served: bool) -> None:
    assert (parse_head(head) is not None) == served
    assert is_media_download(head.split(b"\r\n")[0]) == (served or b"?" in head
                                                         or b"HTTP/2" in head
                                                         or b"\r\n" in head)


def test_keep_alive_rules() -> None:
    def keep(head: bytes) -> bool:
        request = parse_head(head)
        assert request is not None
        return request.keep_alive

    assert keep(b"GET /media/1 HTTP/1.1")
    assert not keep(b"GET /media/1 HTTP/1.1\r\nConnection: close")
    assert not keep(b"GET /media/1 HTTP/1.0")
    assert keep(b"GET /media/1 HTTP/1.0\r\nConnection: keep-alive")


async def raw_exchange(url: str, request: bytes) -> bytes:
    """Send `request` on a new connection (so it is the connection's first) and read
    until the server closes."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    async with stream:
        await stream.send_all(request)
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                received += data
    return received


def split_responses(data: bytes, heads: tuple[int, ...] = ()
                    ) -> list[tuple[str, dict[str, str], bytes]]:
    """The responses in `data`; those at the indexes `heads` answer HEAD (no body)."""
    responses: list[tuple[str, dict[str, str], bytes]] = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if len(responses) in heads else int(headers.get("content-length", "0"))
        responses.append((lines[0], headers, rest[:length]))
        data = rest[length:]
    return responses


async def upload(account: Account, data: bytes, content_type: str) -> dict[str, str]:
    response = await account.http.post("/media/upload", content=data, headers={
        **account.headers, "Content-Type": content_type})
    assert response.status_code == 201
    body: dict[str, str] = response.json()
    return body


async def test_pipelined_requests_then_another_route_on_one_connection(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    data = random_bytes(300_000)
    body = await upload(alice, data, "application/octet-stream")
    auth = f"Authorization: Bearer {alice.token}\r\n".encode()
    url = body["url"].encode()
    requests = (b"GET " + url + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
                + b"GET " + url + b" HTTP/1.1\r\nHost: x\r\nRange: bytes=-5\r\n" + auth + b"\r\n"
                + b"HEAD " + url + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
                + b"GET " + url + b" HTTP/1.1\r\nHost: x\r\n\r\n"
                + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    responses = split_responses(await raw_exchange(server.url, requests), heads=(2,))
    assert [status for status, _, _ in responses] == [
        "HTTP/1.1 200 OK", "HTTP/1.1 206 Partial Content", "HTTP/1.1 200 OK",
        "HTTP/1.1 401 Unauthorized", "HTTP/1.1 200 "]
    full, tail, head, refused, health = responses
    assert hashlib.sha256(full[2]).hexdigest() == body["sha256"]
    assert tail[2] == data[-5:] and tail[1]["content-range"] == "bytes 299995-299999/300000"
    assert head[1]["content-length"] == "300000" and head[2] == b""
    assert refused[1]["www-authenticate"].startswith("Bearer")
    assert b'"status": "ok"' in health[2] or b'"status":"ok"' in health[2]


async def test_both_paths_answer_alike(server: RunningServer, http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    body = await upload(alice, png(), "image/png")
    link = (await alice.post(f"{body['url']}/link", {"ttl_s": 60})).json()["url"]
    auth = f"Authorization: Bearer {alice.token}\r\n"
    cases = [
        f"GET {body['url']} HTTP/1.1\r\nHost: x\r\n{auth}",
        f"GET {body['url']} HTTP/1.1\r\nHost: x\r\nRange: bytes=3-9\r\n{auth}",
        f"GET {body['url']} HTTP/1.1\r\nHost: x\r\nRange: bytes=99999-\r\n{auth}",
        f"GET {body['url']} HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"{body['sha256']}\"\r\n"
        f"{auth}",
        f"HEAD {body['url']}/thumbnail?size=320 HTTP/1.1\r\nHost: x\r\n{auth}",
        f"GET {body['url']}/thumbnail?size=7 HTTP/1.1\r\nHost: x\r\n{auth}",
        f"GET {link} HTTP/1.1\r\nHost: x\r\n",
        f"GET {link.replace('sig=', 'sig=0')} HTTP/1.1\r\nHost: x\r\n",
        f"GET /media/1 HTTP/1.1\r\nHost: x\r\n{auth}",
        f"GET {body['url']} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n",
    ]
    ignored = {"date", "server", "connection", "content-type"}
    for case in cases:
        request = (case + "Connection: close\r\n\r\n").encode()
        heads = (0,) if case.startswith("HEAD") else ()
        [direct] = split_responses(await raw_exchange(server.url, request), heads)
        # Through quart: the connection's first request decides its path.
        via_quart = await raw_exchange(
            server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + request)
        [_, routed] = split_responses(via_quart, tuple(1 + i for i in heads))
        assert direct[0].split(" ")[1] == routed[0].split(" ")[1], case
        assert {k: v for k, v in direct[1].items() if k not in ignored} == \
            {k: v for k, v in routed[1].items() if k not in ignored}, case
        assert direct[2] == routed[2], case
        assert direct[1].get("content-type", "").split(";")[0] == \
            routed[1].get("content-type", "").split(";")[0], case
