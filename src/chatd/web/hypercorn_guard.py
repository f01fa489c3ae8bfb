"""Guards hypercorn 0.18's HTTP serving against clients that stall, and against its own
connection bookkeeping being cancelled.

1. Stuck writes. hypercorn writes to a socket inside a *shielded* `send_all`, so a peer
   that never reads (its TCP window stays shut) blocks that write, the app task behind it
   and even graceful shutdown, for good. The guarded write gives up after
   `config.chatd_send_timeout` seconds (a shielded scope's own deadline still fires) and
   aborts the connection.

2. Connection bookkeeping run in a cancelled task. When a response ends, hypercorn's
   `H11Protocol._maybe_recycle` first tells the app `http.disconnect` and then, still in
   the app's task (the app's `send` call), re-arms the keep-alive timer (`Updated`) or
   closes the socket (`Closed`). quart-trio answers `http.disconnect` by cancelling the
   request's nursery, which holds that very task, so the next checkpoint raises
   `Cancelled`: the keep-alive timer is never re-armed (idle connections were never
   reaped) and `TCPServer._close()` dies in `send_eof()`, leaving a connection that
   hypercorn has given up on open: a keep-alive client's next request on it was never
   answered. Both are run shielded here; both are quick (a timer task started, a socket
   shut down and closed) and keep a deadline anyway.

3. An early response says `Connection: close`. A response that starts while the request
   body is still unread (hypercorn answers, the body is not drained) ends with hypercorn
   closing the connection, because h11 cannot start the next request before the body is
   read. The response now says so, so a keep-alive client does not send its next request
   into a connection that is about to close. (`web/app.py` first waits briefly for the
   body, so this is for bodies that are late, too large or never come.)

4. HTTP/2 data for a finished stream. Once a stream's response is complete hypercorn
   forgets the stream, but the client may still be sending its body (a 404, 408 or 413
   answered early). hypercorn 0.18 then looks the stream up without a guard
   (`H2Protocol._handle_events`, the `DataReceived` branch) and the `KeyError` ended the
   whole connection, every stream on it, with a traceback (upstream pgjones/hypercorn
   #329, fixed by the open #312/#334). Such data is now acknowledged, so the connection's
   flow-control window stays open, and dropped.

(An exception that escapes one connection's handling no longer needs a guard here:
`web/front.py` runs each connection's hypercorn server inside its own try, so it ends
that connection only. It did end the whole shard under `hypercorn.trio.serve`.)
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import h2.events
import h11
import trio
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol.events import Response
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)


#: Seconds a single socket write may take when the server config does not say.
DEFAULT_SEND_TIMEOUT = 10.0
#: Seconds the shielded connection bookkeeping may take; it is a few syscalls, so this
#: is only there so a shield can never hold a task forever.
_BOOKKEEPING_TIMEOUT = 5.0


def install() -> None:
    _guard_protocol_send()
    _close_after_early_responses()
    _drop_input_after_client_error()
    _drop_data_for_finished_h2_streams()


def _guard_protocol_send() -> None:
    original = TCPServer.protocol_send
    if getattr(original, "_chatd_guarded", False):
        return

    async def protocol_send(self: TCPServer, event: Any) -> None:
        if isinstance(event, RawData):
            await _send_with_deadline(self, event)
        elif isinstance(event, Closed):
            if _response_in_flight_after_client_error(self):
                return
            # What hypercorn's own Closed branch does, with the socket part shielded
            # (see 2 above). The protocol's own clean-up stays cancellable: it only tells
            # streams that are still open, and a cancelled one is repeated by the reader
            # task when it sees the socket closed.
            with trio.CancelScope(shield=True,
                                  deadline=trio.current_time() + _BOOKKEEPING_TIMEOUT):
                await self._close()
            await self.protocol.handle(Closed())
        elif isinstance(event, Updated):
            with trio.CancelScope(shield=True,
                                  deadline=trio.current_time() + _BOOKKEEPING_TIMEOUT):
                await original(self, event)
        else:
            await original(self, event)

    protocol_send._chatd_guarded = True  # type: ignore[attr-defined]
    TCPServer.protocol_send = protocol_send  # type: ignore[method-assign]


async def _send_with_deadline(self: TCPServer, event: RawData) -> None:
    timeout = getattr(self.config, "chatd_send_timeout", DEFAULT_SEND_TIMEOUT)
    async with self.send_lock:
        try:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + timeout
                await self.stream.send_all(event.data)
        # Busy: the only other sender is the socket's send_eof(), i.e. the reader task is
        # closing the connection (a client protocol error) while a response is written.
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            gone = True
        else:
            gone = False
    if gone:
        await self.protocol.handle(Closed())
        return
    if scope.cancelled_caught:
        log.info("a client read nothing for %.0f s; aborting its connection", timeout)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.aclose()
        await self.protocol.handle(Closed())


def _response_in_flight_after_client_error(server: TCPServer) -> bool:
    """Whether this close comes from hypercorn's reader task on a client protocol error
    (h11 `their_state` ERROR) while the app is still writing its response.

    That happens when a response said `Connection: close` (see 3 above) and the client
    had already sent its next request: h11 refuses bytes after a body on a closing
    connection. Closing at once cut the answer off, often before its first byte, so the
    client got a bare close. The close is left to the end of the response instead (the
    response's end closes the connection, since h11 cannot recycle it), and what the
    client sends meanwhile is dropped (`_drop_input_after_client_error`)."""
    protocol = server.protocol.protocol
    if not isinstance(protocol, H11Protocol) or protocol.stream is None:
        return False
    connection = protocol.connection
    return (isinstance(connection, h11.Connection) and connection.their_state is h11.ERROR
            and connection.our_state is h11.SEND_BODY)


def _drop_input_after_client_error() -> None:
    original = H11Protocol.handle
    if getattr(original, "_chatd_guarded", False):
        return

    async def handle(self: H11Protocol, event: Any) -> None:
        # Nothing more can be parsed from a client h11 has put in ERROR; keeping its bytes
        # would only grow h11's buffer while a response is still being written.
        if (isinstance(event, RawData) and event.data
                and isinstance(self.connection, h11.Connection)
                and self.connection.their_state is h11.ERROR):
            return
        await original(self, event)

    handle._chatd_guarded = True  # type: ignore[attr-defined]
    H11Protocol.handle = handle  # type: ignore[method-assign]


def _close_after_early_responses() -> None:
    original = H11Protocol.stream_send
    if getattr(original, "_chatd_guarded", False):
        return

    async def stream_send(self: H11Protocol, event: Any) -> None:
        if (isinstance(event, Response) and event.status_code >= 200
                and self.connection.their_state is h11.SEND_BODY
                and not _says_close(event.headers)):
            event = Response(stream_id=event.stream_id, status_code=event.status_code,
                             headers=[*event.headers, (b"connection", b"close")])
        await original(self, event)

    stream_send._chatd_guarded = True  # type: ignore[attr-defined]
    H11Protocol.stream_send = stream_send  # type: ignore[method-assign]


def _says_close(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"connection" and b"close" in value.lower()
               for name, value in headers)


def _drop_data_for_finished_h2_streams() -> None:
    original = H2Protocol._handle_events
    if getattr(original, "_chatd_guarded", False):
        return

    async def _handle_events(self: H2Protocol, events: list[h2.events.Event]) -> None:
        # One event at a time, because handling one can finish a stream the next refers to.
        for event in events:
            if (isinstance(event, h2.events.DataReceived)
                    and event.stream_id not in self.streams):
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id)
                # Nothing else may be about to flush for this stream: send the window
                # update now, or a client uploading more would stall on a closed window.
                await self._flush()
                continue
            await original(self, [event])

    _handle_events._chatd_guarded = True  # type: ignore[attr-defined]
    H2Protocol._handle_events = _handle_events  # type: ignore[method-assign]
