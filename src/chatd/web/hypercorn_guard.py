"""A guard against one malformed client taking the whole server down.

hypercorn 0.18 lets an h11 `LocalProtocolError` raised while handling a connection's
bytes escape its per-connection task, and its TCP server only catches `OSError` there, so
the error ends `hypercorn.trio.serve` and with it every connection (wrapped in an
exception group, so even an `OSError` would not be caught there). One way to get there:
a WebSocket upgrade request that carries a body (the stream answers with an error
response while h11 is already switching protocols). `install()` wraps the protocol's
`handle` so that such an error closes just that connection. It is idempotent;
tests/web/test_ws.py sends such a request and checks that the server lives on.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import h11
import trio
import wsproto.utilities
from hypercorn.events import Closed
from hypercorn.protocol import ProtocolWrapper

log = logging.getLogger(__name__)
_CLIENT_PROTOCOL_ERRORS = (h11.LocalProtocolError, wsproto.utilities.LocalProtocolError)


def install() -> None:
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
