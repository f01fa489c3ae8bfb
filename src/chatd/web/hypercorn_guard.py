"""Guards against one misbehaving client hurting the whole server.

1. A protocol error must close one connection, not the server.

hypercorn 0.18 lets an h11 `LocalProtocolError` raised while handling a connection's
bytes escape its per-connection task, and its TCP server only catches `OSError` there, so
the error ends `hypercorn.trio.serve` and with it every connection (wrapped in an
exception group, so even an `OSError` would not be caught there). One way to get there:
a WebSocket upgrade request that carries a body (the stream answers with an error
response while h11 is already switching protocols). `install()` wraps the protocol's
`handle` so that such an error closes just that connection. It is idempotent;
tests/web/test_ws.py sends such a request and checks that the server lives on.

2. A client that stops reading must not pin a task forever. hypercorn writes to a socket
inside a *shielded* `send_all`, so a peer that never reads (its TCP window stays shut)
blocks that write, the app task behind it and even graceful shutdown, for good. The
guarded write gives up after `config.chatd_send_timeout` seconds (a shielded scope's own
deadline still fires) and aborts the connection. The WebSocket layer's own back-pressure
(close 4008 when a socket's queue is full) handles consumers that are merely slow.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import h11
import trio
import wsproto.utilities
from hypercorn.events import Closed, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)
_CLIENT_PROTOCOL_ERRORS = (h11.LocalProtocolError, wsproto.utilities.LocalProtocolError)


#: Seconds a single socket write may take when the server config does not say.
DEFAULT_SEND_TIMEOUT = 10.0


def install() -> None:
    _guard_protocol_errors()
    _guard_stuck_writes()


def _guard_stuck_writes() -> None:
    original = TCPServer.protocol_send
    if getattr(original, "_chatd_guarded", False):
        return

    async def protocol_send(self: TCPServer, event: Any) -> None:
        if not isinstance(event, RawData):
            await original(self, event)
            return
        timeout = getattr(self.config, "chatd_send_timeout", DEFAULT_SEND_TIMEOUT)
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + timeout
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
                return
        if scope.cancelled_caught:
            log.info("a client read nothing for %.0f s; aborting its connection", timeout)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.aclose()
            await self.protocol.handle(Closed())

    protocol_send._chatd_guarded = True  # type: ignore[attr-defined]
    TCPServer.protocol_send = protocol_send  # type: ignore[method-assign]


def _guard_protocol_errors() -> None:
    original = ProtocolWrapper.handle
    if getattr(original, "_chatd_guarded", False):
        return

    async def handle(self: ProtocolWrapper, event: Any) -> None:
        if getattr(self, "_chatd_aborted", False):
            return
        try:
            await original(self, event)
        except _CLIENT_PROTOCOL_ERRORS as exc:
            log.info("closing a connection that broke the HTTP/WebSocket protocol: %s", exc)
            self._chatd_aborted = True  # type: ignore[attr-defined]
            # Closes the socket; the read loop then ends the connection's tasks.
            with contextlib.suppress(*_CLIENT_PROTOCOL_ERRORS, trio.BrokenResourceError,
                                     trio.ClosedResourceError):
                await self.send(Closed())

    handle._chatd_guarded = True  # type: ignore[attr-defined]
    ProtocolWrapper.handle = handle  # type: ignore[method-assign]
