"""Request bodies that reach their handler unbuffered, with back-pressure: uploads.

quart reads every request body into memory as it arrives (`Request.body`), with no
back-pressure, and caps it at `MAX_CONTENT_LENGTH` (1 MiB here) when the request is
built. An upload of 1 GiB must neither be refused for that nor buffered. So for the
paths named here, `StreamedBodies` (ASGI middleware, outside quart) hands quart an empty
body and puts the real ASGI `receive` in the scope (`body_of(request)`): the handler
reads the body part by part as it stores it. hypercorn queues at most a few parts per
request before it stops reading the socket, so TCP pushes back on a client that sends
faster than the disk takes it, and memory stays bounded whatever the upload's size.

Since quart never waits for these bodies, an early answer (401, 413, 415) goes out at
once and the connection is closed after it (`web/hypercorn_adapter.py`, guard 3):
nothing of a refused upload is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    Scope,
)
from quart import Request

from chatd.errors import BadRequest, ChatdError

_KEY = "chatd.streamed_body"


class RequestTimeout(ChatdError):
    status = 408
    code = "request_timeout"


class ClientGone(Exception):
    """The client went away before its body was complete."""


class StreamedBodies:
    def __init__(self, app: Any, paths: frozenset[str]) -> None:
        self._app = app
        self._paths = paths

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or \
                scope["path"] not in self._paths:
            await self._app(scope, receive, send)
            return
        given = False

        async def empty_body() -> ASGIReceiveEvent:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": b"", "more_body": False}
            # quart ends the request when it is told of a disconnect: it never is here,
            # the handler owns `receive` (quart-trio cancels this once it has answered).
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        extensions: dict[str, Any] = dict(scope.get("extensions") or {})
        extensions[_KEY] = receive
        await self._app({**scope, "extensions": extensions}, empty_body, send)


async def body_of(request: Request, *, idle_timeout: float) -> AsyncIterator[bytes]:
    """The request's body, part by part, as the client sends it. Raises 408 when no part
    arrives for `idle_timeout` seconds, `ClientGone` when the client leaves."""
    extensions: dict[str, Any] = request.scope.get("extensions") or {}
    receive: ASGIReceiveCallable | None = extensions.get(_KEY)
    if receive is None:
        raise BadRequest("this route takes a streamed body")  # pragma: no cover (wiring)
    while True:
        with trio.move_on_after(idle_timeout) as waiting:
            message = await receive()
        if waiting.cancelled_caught:
            raise RequestTimeout(f"no part of the body arrived for {idle_timeout:g} seconds")
        if message["type"] == "http.disconnect":
            raise ClientGone("the client left before its body was complete")
        if message["type"] != "http.request":
            continue
        data = message.get("body", b"")
        if data:
            yield data
        if not message.get("more_body", False):
            return
