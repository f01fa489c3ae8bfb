"""The shard's listener: one port for REST and the live stream.

Each accepted connection's request line decides who serves it. `GET /ws` goes to chatd's
own WebSocket path (`web/sockets.py`), which keeps an idle connection to a few KB;
everything else goes to hypercorn's HTTP server and the quart-trio app, with the bytes
already read put back in front of the stream. This replaces `hypercorn.trio.serve`, whose
listener cannot split connections this way; the parts of it kept here are the same ones
it wires together (the ASGI lifespan, the worker context, its per-connection
`TCPServer`), so hypercorn's HTTP handling is unchanged. The hypercorn version is pinned
in pyproject.toml for that reason.

    FrontServer.run
    ├── lifespan          quart's startup/shutdown (ASGI lifespan)
    ├── LiveSockets.run   the WebSocket flusher, idle reaper and drain tasks
    └── connections       one task per accepted socket: HTTP via hypercorn, or /ws
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.statsd import StatsdLogger
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper
from hypercorn.utils import wrap_app
from quart_trio import QuartTrio

from chatd.protocol.handshake import path_of
from chatd.web.sockets import HANDSHAKE_TIMEOUT, LiveSockets

log = logging.getLogger(__name__)

#: The most of a request line read before deciding who serves the connection.
_MAX_REQUEST_LINE = 8192
#: accept() failures that mean "out of a resource for now", not "the listener is broken".
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                            errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A socket stream that first returns bytes already read from it (the request line
    read to route the connection). It has no `do_handshake`, so hypercorn treats it as
    plain TCP."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def _routes_to_live_stream(request_line: bytes) -> bool:
    parts = request_line.decode("latin-1").split(" ")
    return len(parts) == 3 and path_of(parts[1]) == "/ws"


class FrontServer:
    def __init__(self, app: QuartTrio, hconfig: HypercornConfig, sockets: LiveSockets, *,
                 host: str, port: int, backlog: int, graceful_timeout: float) -> None:
        self._app: AppWrapper = wrap_app(app, hconfig.wsgi_max_body_size, None)
        self._hconfig = hconfig
        self._sockets = sockets
        self._host = host
        self._port = port
        self._backlog = backlog
        self._graceful_timeout = graceful_timeout
        self._context = WorkerContext(None)
        self._state: dict[str, Any] = {}

    def _listen(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._host, self._port))
            listener.listen(self._backlog)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        return listener

    async def run(self, shutdown: trio.Event, *,
                  task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until `shutdown` is set; then stop accepting, close every WebSocket with
        1001 (the hub does that, see server.py), let HTTP requests finish within the
        graceful timeout, and return."""
        self._hconfig.set_statsd_logger_class(StatsdLogger)
        listener = self._listen()
        host, port = listener.getsockname()[:2]
        lifespan = Lifespan(self._app, self._hconfig, self._state)
        try:
            async with trio.open_nursery() as lifespan_nursery:
                await lifespan_nursery.start(lifespan.handle_lifespan)
                await lifespan.wait_for_startup()
                async with trio.open_nursery() as background:
                    await background.start(self._sockets.run)
                    async with trio.open_nursery() as connections:
                        async with trio.open_nursery() as accepting:
                            accepting.start_soon(self._accept_forever, listener, connections)
                            shown = f"[{host}]" if ":" in host else host
                            task_status.started(f"http://{shown}:{port}")
                            await shutdown.wait()
                            accepting.cancel_scope.cancel()
                        await self._context.terminated.set()
                        connections.cancel_scope.deadline = (
                            trio.current_time() + self._graceful_timeout)
                    background.cancel_scope.cancel()
                await lifespan.wait_for_shutdown()
                lifespan_nursery.cancel_scope.cancel()
        finally:
            listener.close()

    async def _accept_forever(self, listener: socket.socket, connections: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            for _ in range(256):  # take a burst, then let the new connections start
                try:
                    sock, _address = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                        raise
                    log.warning("accept failed (%s); pausing new connections briefly",
                                errno.errorcode.get(exc.errno or 0, exc))
                    await trio.sleep(0.1)
                    break
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connections.start_soon(self._serve_connection, sock)

    async def _serve_connection(self, sock: socket.socket) -> None:
        try:
            received = await self._read_request_line(sock)
            if received is None:
                return
            if _routes_to_live_stream(received.split(b"\r\n", 1)[0]):
                await self._sockets.serve(sock, received)
                return
            stream = PrefixedStream(trio.SocketStream(trio.socket.from_stdlib_socket(sock)),
                                    received)
            # Annotated as an SSL stream, but hypercorn takes any stream without
            # do_handshake() as plain TCP.
            await TCPServer(self._app, self._hconfig, self._context, self._state,
                            stream)  # type: ignore[arg-type]
        except Exception:
            # One connection's failure must never reach the nursery of all of them.
            log.exception("error while serving a connection")
        finally:
            # hypercorn closes its streams, except when cancelled in its send_eof().
            if sock.fileno() != -1:
                trio.lowlevel.notify_closing(sock)
                sock.close()

    async def _read_request_line(self, sock: socket.socket) -> bytes | None:
        received = b""
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            while b"\r\n" not in received and len(received) < _MAX_REQUEST_LINE:
                try:
                    data = sock.recv(65_536)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                except OSError:
                    return None
                if not data:
                    return received or None
                received += data
            return received
        return None
