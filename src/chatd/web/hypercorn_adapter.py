"""Every use of hypercorn's internals, in one place: REST served on chatd's own listener.

chatd serves `/ws` and REST on one port (docs/architecture.md, "hypercorn adapter"), so
`web/front.py` accepts each connection itself and hands the REST ones here, to hypercorn's
per-connection HTTP server. hypercorn's public `serve()` cannot do that: it owns its
listener. What this costs is a dependency on hypercorn's internals (its `TCPServer`, the
protocol classes, `Lifespan`, `WorkerContext`, `wrap_app`), and this module keeps that
cost in one file:

- `require_supported_hypercorn()` refuses, with a clear message, a hypercorn whose minor
  version this module was not written against (`SUPPORTED`); `chatd serve` checks it at
  startup. `tests/web/test_hypercorn_contract.py` pins the shapes used here (signatures,
  attributes, and fingerprints of the hypercorn methods this module restates), so an
  upgrade fails there, loudly, before it can misbehave.
- The guards below are subclasses of hypercorn's classes, used only for chatd's own
  connections. Nothing of hypercorn is patched: hypercorn used elsewhere in the process
  behaves as shipped.

Guards (tests: tests/web/test_http_edge.py and tests/web/test_hypercorn_guard.py):

1. Stuck writes. hypercorn writes to a socket inside a *shielded* `send_all`, so a peer
   that never reads (its TCP window stays shut) blocks that write, the app task behind it
   and even graceful shutdown, for good. Each write here gives up after `send_timeout`
   seconds (a shielded scope's own deadline still fires) and aborts the connection.

2. Connection bookkeeping run in a cancelled task. When a response ends, hypercorn's
   `H11Protocol` first tells the app `http.disconnect` and then, still in the app's task
   (the app's `send` call), re-arms the keep-alive timer (`Updated`) or closes the socket
   (`Closed`). quart-trio answers `http.disconnect` by cancelling the request's nursery,
   which holds that very task, so the next checkpoint raises `Cancelled`: the keep-alive
   timer was never re-armed (idle connections were never reaped) and the socket's close
   died half done, leaving a connection hypercorn had given up on open: a keep-alive
   client's next request on it was never answered. Both run shielded here; both are
   quick (a timer task started, a socket shut down and closed) and keep a deadline anyway.

3. An early response says `Connection: close`. A response that starts while the request
   body is still unread (hypercorn answers, the body is not drained) ends with hypercorn
   closing the connection, because h11 cannot start the next request before the body is
   read. The response says so, so a keep-alive client does not send its next request
   into a connection that is about to close. (`web/app.py` first waits briefly for the
   body, so this is for bodies that are late, too large or never come.) If the client
   sent its next request anyway, h11 refuses those bytes: the response is still written
   to its end (closing at once cut it off, often before its first byte) and what the
   client sends meanwhile is dropped.

4. HTTP/2 data for a finished stream. Once a stream's response is complete hypercorn
   forgets the stream, but the client may still be sending its body (a 404, 408 or 413
   answered early). hypercorn then looks the stream up without a guard and the
   `KeyError` ended the whole connection, every stream on it, with a traceback (upstream
   pgjones/hypercorn#329). Such data is acknowledged, so the connection's flow-control
   window stays open, and dropped.

5. No WebSockets over HTTP/2. hypercorn advertises RFC 8441 (`ENABLE_CONNECT_PROTOCOL`),
   which invites a browser holding an HTTP/2 connection to open `/ws` on it; chatd's
   WebSocket transport is HTTP/1.1 only and the app has no WebSocket route, so that
   attempt would fail. Not advertising it makes browsers open `/ws` on a connection of
   its own, which `web/front.py` routes to chatd's transport. (This matters with TLS,
   where browsers negotiate HTTP/2.)

An exception that escapes one connection's handling ends that connection only:
`web/front.py` runs each one inside its own try.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast

import h2.events
import h2.exceptions
import h2.settings
import h11
import trio

try:
    from hypercorn.config import Config
    from hypercorn.events import Closed, Event, RawData, Updated
    from hypercorn.protocol import ProtocolWrapper
    from hypercorn.protocol.events import Event as StreamEvent
    from hypercorn.protocol.events import Response
    from hypercorn.protocol.h2 import H2Protocol
    from hypercorn.protocol.h11 import (
        H2CProtocolRequiredError,
        H2ProtocolAssumedError,
        H11Protocol,
    )
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.task_group import TaskGroup
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import AppWrapper, ASGIFramework, ConnectionState
    from hypercorn.utils import parse_socket_addr, wrap_app
except ImportError as exc:  # a hypercorn whose internals have moved
    raise ImportError(
        f"chatd cannot use the installed hypercorn ({exc}); it supports hypercorn 0.17.x and "
        "0.18.x: pip install 'hypercorn>=0.17,<0.19'") from exc

log = logging.getLogger(__name__)

#: hypercorn minor versions whose internals this module is written against (and tested
#: with). Widen it only after tests/web/test_hypercorn_contract.py passes on the new one.
SUPPORTED = ((0, 17), (0, 18))
#: Seconds the shielded connection bookkeeping may take; it is a few syscalls, so this
#: is only there so a shield can never hold a task forever.
_BOOKKEEPING_TIMEOUT = 5.0


class UnsupportedHypercorn(ImportError):
    """The installed hypercorn is not one this adapter was written against."""


def check_hypercorn_version(installed: str) -> None:
    """Raise UnsupportedHypercorn unless `installed` (a version string) is supported."""
    match = re.match(r"(\d+)\.(\d+)", installed)
    if match is None or (int(match[1]), int(match[2])) not in SUPPORTED:
        wanted = " or ".join(f"{major}.{minor}.x" for major, minor in SUPPORTED)
        raise UnsupportedHypercorn(
            f"chatd needs hypercorn {wanted}, but {installed} is installed: "
            "web/hypercorn_adapter.py drives hypercorn's per-connection HTTP server, whose "
            "internals change between minor versions. Install a supported one: "
            "pip install 'hypercorn>=0.17,<0.19'")


def require_supported_hypercorn() -> None:
    try:
        installed = version("hypercorn")
    except PackageNotFoundError:  # pragma: no cover - imported above, so it is there
        installed = "an unknown version"
    check_hypercorn_version(installed)


class HttpServer:
    """hypercorn's HTTP/1.1 and HTTP/2 for one ASGI app, one accepted connection at a time.

    `run_lifespan` runs the app's startup and shutdown; `serve_connection` serves one
    connection until it ends; `begin_shutdown` tells keep-alive connections to close
    after their current request and HTTP/2 ones to take no new streams."""

    def __init__(self, app: ASGIFramework, *, graceful_timeout: float,
                 send_timeout: float) -> None:
        require_supported_hypercorn()
        config = Config()
        config.graceful_timeout = graceful_timeout
        # No access log: request lines can carry tokens in query strings (WebSocket auth).
        config.accesslog = None
        # Through our logging setup (a bare "-" would add a second stderr handler).
        config.errorlog = logging.getLogger("hypercorn.error")
        self._config = config
        self._app: AppWrapper = wrap_app(app, config.wsgi_max_body_size, None)
        self._context = WorkerContext(None)
        self._state: dict[str, Any] = {}
        self._send_timeout = send_timeout

    async def run_lifespan(self, stopped: trio.Event, *,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                           ) -> None:
        """The app's ASGI startup, then `task_status.started()`; its shutdown once
        `stopped` is set."""
        lifespan = Lifespan(self._app, self._config, self._state)
        async with trio.open_nursery() as nursery:
            await nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            task_status.started()
            await stopped.wait()
            await lifespan.wait_for_shutdown()
            nursery.cancel_scope.cancel()

    async def begin_shutdown(self) -> None:
        await self._context.terminated.set()

    async def serve_connection(self, stream: trio.abc.Stream, sock: socket.socket, *,
                               tls: bool = False, alpn: str | None = None) -> None:
        """Serve HTTP on `stream`, a connection accepted on `sock` (its addresses go to the
        app). With `tls`, the handshake is done and `alpn` is what it negotiated."""
        await _ConnectionServer(self._app, self._config, self._context, self._state, stream,
                                sock=sock, tls=tls, alpn=alpn or "http/1.1",
                                send_timeout=self._send_timeout).run()


class _ConnectionServer(TCPServer):
    """hypercorn's per-connection server with guards 1 and 2, and guarded protocols."""

    def __init__(self, app: AppWrapper, config: Config, context: WorkerContext,
                 state: dict[str, Any], stream: trio.abc.Stream, *, sock: socket.socket,
                 tls: bool, alpn: str, send_timeout: float) -> None:
        # hypercorn annotates the stream as a TLS stream, but uses only the Stream methods
        # once the handshake is done (its run(), which does the handshake, is ours).
        super().__init__(app, config, context, state,
                         cast("trio.SSLStream[trio.SocketStream]", stream))
        self._sock = sock
        self._tls = tls
        self._alpn = alpn
        self._send_timeout = send_timeout

    async def run(self) -> None:
        # hypercorn's TCPServer.run, less its TLS handshake: web/front.py did that (it had
        # to, to read the request line), so it says whether this is TLS and what ALPN chose.
        try:
            client = parse_socket_addr(self._sock.family, self._sock.getpeername())
            server = parse_socket_addr(self._sock.family, self._sock.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = _Protocols(
                    self.app, self.config, self.context, task_group,
                    ConnectionState(self.state.copy()), self._tls, client, server,
                    self.protocol_send, self._alpn)
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            await self._send_with_deadline(event.data)
        elif isinstance(event, Closed):
            protocol = self.protocol.protocol
            if isinstance(protocol, _H11) and protocol.writing_after_client_error():
                # Guard 3: the response's own end closes the connection.
                return
            # What hypercorn's Closed branch does, with the socket part shielded (guard 2).
            # The protocol's own clean-up stays cancellable: it only tells streams that
            # are still open, and a cancelled one is repeated by the reader task when it
            # sees the socket closed.
            with _bookkeeping():
                await self._close()
            await self.protocol.handle(Closed())
        elif isinstance(event, Updated):
            with _bookkeeping():
                await super().protocol_send(event)
        else:
            await super().protocol_send(event)

    async def _send_with_deadline(self, data: bytes) -> None:
        async with self.send_lock:
            try:
                with trio.CancelScope(shield=True,
                                      deadline=trio.current_time() + self._send_timeout) as scope:
                    await self.stream.send_all(data)
            # Busy: the only other sender is the socket's send_eof(), i.e. the reader task
            # is closing the connection (a client protocol error) while a response is
            # written.
            except (trio.BrokenResourceError, trio.ClosedResourceError,
                    trio.BusyResourceError):
                gone = True
            else:
                gone = False
        if gone:
            await self.protocol.handle(Closed())
            return
        if scope.cancelled_caught:
            log.info("a client read nothing for %.0f s; aborting its connection",
                     self._send_timeout)
            await trio.aclose_forcefully(self.stream)
            await self.protocol.handle(Closed())


@contextmanager
def _bookkeeping() -> Iterator[None]:
    with trio.CancelScope(shield=True, deadline=trio.current_time() + _BOOKKEEPING_TIMEOUT):
        yield


class _Protocols(ProtocolWrapper):
    """hypercorn's ProtocolWrapper, building the guarded protocols: HTTP/1.1 or HTTP/2 by
    ALPN, and a switch to HTTP/2 on an h2c upgrade or HTTP/2 prior knowledge."""

    def __init__(self, app: AppWrapper, config: Config, context: WorkerContext,
                 task_group: TaskGroup, state: ConnectionState, ssl: bool,
                 client: tuple[str, int] | None, server: tuple[str, int] | None,
                 send: Any, alpn_protocol: str | None = None) -> None:
        # Not super().__init__(): it would first build hypercorn's unguarded protocol.
        self.app = app
        self.config = config
        self.context = context
        self.task_group = task_group
        self.ssl = ssl
        self.client = client
        self.server = server
        self.send = send
        self.state = state
        self.protocol: H11Protocol | H2Protocol = (
            self._h2() if alpn_protocol == "h2" else
            _H11(app, config, context, task_group, state, ssl, client, server, send))

    def _h2(self) -> _H2:
        return _H2(self.app, self.config, self.context, self.task_group, self.state,
                   self.ssl, self.client, self.server, self.send)

    async def handle(self, event: Event) -> None:
        try:
            await self.protocol.handle(event)
        except H2ProtocolAssumedError as error:
            protocol = self._h2()
            self.protocol = protocol
            await protocol.initiate()
            if error.data != b"":
                await protocol.handle(RawData(data=error.data))
        except H2CProtocolRequiredError as error:
            protocol = self._h2()
            self.protocol = protocol
            await protocol.initiate(error.headers, error.settings)
            if error.data != b"":
                await protocol.handle(RawData(data=error.data))


class _H11(H11Protocol):
    """HTTP/1.1 with guard 3."""

    def client_failed(self) -> bool:
        """Whether h11 has refused the client's bytes (their state is ERROR)."""
        return (isinstance(self.connection, h11.Connection)
                and self.connection.their_state is h11.ERROR)

    def writing_after_client_error(self) -> bool:
        """Whether a response is still being written to a client h11 has refused: what
        happens when a response said `Connection: close` and the client had already sent
        its next request (h11 refuses bytes after a body on a closing connection)."""
        return (self.stream is not None and self.client_failed()
                and isinstance(self.connection, h11.Connection)
                and self.connection.our_state is h11.SEND_BODY)

    async def handle(self, event: Event) -> None:
        # Nothing more can be parsed from a client h11 has put in ERROR; keeping its bytes
        # would only grow h11's buffer while a response is still being written.
        if isinstance(event, RawData) and event.data and self.client_failed():
            return
        await super().handle(event)

    async def stream_send(self, event: StreamEvent) -> None:
        if (isinstance(event, Response) and event.status_code >= 200
                and self.connection.their_state is h11.SEND_BODY
                and not _says_close(event.headers)):
            event = Response(stream_id=event.stream_id, status_code=event.status_code,
                             headers=[*event.headers, (b"connection", b"close")])
        await super().stream_send(event)


def _says_close(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"connection" and b"close" in value.lower()
               for name, value in headers)


class _H2(H2Protocol):
    """HTTP/2 with guards 4 and 5."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # Everything hypercorn set, but ENABLE_CONNECT_PROTOCOL (guard 5). The settings are
        # rebuilt rather than changed, because a changed setting is only sent once the
        # client acknowledges the first ones.
        settings = cast("dict[h2.settings.SettingCodes, int]",
                        dict(self.connection.local_settings.items()))
        settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] = 0
        self.connection.local_settings = h2.settings.Settings(client=False,
                                                              initial_values=settings)

    async def handle(self, event: Event) -> None:
        if not isinstance(event, RawData):
            await super().handle(event)
            return
        # hypercorn's RawData branch, handing the events over one at a time, because
        # handling one can finish a stream the next refers to.
        try:
            events = self.connection.receive_data(event.data)
        except h2.exceptions.ProtocolError:
            await self._flush()
            await self.send(Closed())
            return
        for h2_event in events:
            if (isinstance(h2_event, h2.events.DataReceived)
                    and h2_event.stream_id not in self.streams):
                self.connection.acknowledge_received_data(
                    h2_event.flow_controlled_length or 0, h2_event.stream_id)
                # Nothing else may be about to flush for this stream: send the window
                # update now, or a client uploading more would stall on a closed window.
                await self._flush()
                continue
            await self._handle_events([h2_event])
