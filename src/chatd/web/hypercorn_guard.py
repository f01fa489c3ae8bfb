"""Guards hypercorn's HTTP serving against one client that stops reading.

hypercorn writes to a socket inside a *shielded* `send_all`, so a peer that never reads
(its TCP window stays shut) blocks that write, the app task behind it and even graceful
shutdown, for good. The guarded write gives up after `config.chatd_send_timeout` seconds
(a shielded scope's own deadline still fires) and aborts the connection.

(An exception that escapes one connection's handling no longer needs a guard here:
`web/front.py` runs each connection's hypercorn server inside its own try, so it ends
that connection only. It did end the whole shard under `hypercorn.trio.serve`.)
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)


#: Seconds a single socket write may take when the server config does not say.
DEFAULT_SEND_TIMEOUT = 10.0


def install() -> None:
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
