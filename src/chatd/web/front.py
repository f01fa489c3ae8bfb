"""The shard's listener: one port for REST and the live stream.

Each accepted connection's request line decides who serves it. `GET /ws` goes to chatd's
own WebSocket path (`web/sockets.py`), which keeps an idle connection to a few KB;
everything else goes to hypercorn's HTTP server and the quart-trio app
(`web/hypercorn_adapter.py`, the one module that knows hypercorn's internals), with the
bytes already read put back in front of the stream.

    FrontServer.run
    ├── lifespan          quart's startup/shutdown (ASGI lifespan)
    ├── LiveSockets.run   the WebSocket flusher, idle reaper and drain tasks
    └── connections       one task per accepted socket: HTTP via hypercorn, or /ws
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from chatd.protocol.handshake import path_of
from chatd.web.hypercorn_adapter import HttpServer
from chatd.web.sockets import HANDSHAKE_TIMEOUT, LiveSockets

log = logging.getLogger(__name__)

#: The most of a request line read before deciding who serves the connection.
_MAX_REQUEST_LINE = 8192
_RECV_SIZE = 65_536
#: accept() failures that mean "out of a resource for now", not "the listener is broken".
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                            errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A connection's stream that first returns bytes already read from it (the request
    line read to route the connection)."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

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
    def __init__(self, http: HttpServer, sockets: LiveSockets, *, host: str, port: int,
                 backlog: int, graceful_timeout: float) -> None:
        self._http = http
        self._sockets = sockets
        self._host = host
        self._port = port
        self._backlog = backlog
        self._graceful_timeout = graceful_timeout

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
        listener = self._listen()
        host, port = listener.getsockname()[:2]
        lifespan_over = trio.Event()
        try:
            async with trio.open_nursery() as lifespan_nursery:
                await lifespan_nursery.start(self._http.run_lifespan, lifespan_over)
                try:
                    async with trio.open_nursery() as background:
                        await background.start(self._sockets.run)
                        async with trio.open_nursery() as connections:
                            async with trio.open_nursery() as accepting:
                                accepting.start_soon(self._accept_forever, listener,
                                                     connections)
                                shown = f"[{host}]" if ":" in host else host
                                task_status.started(f"http://{shown}:{port}")
                                await shutdown.wait()
                                accepting.cancel_scope.cancel()
                            await self._http.begin_shutdown()
                            connections.cancel_scope.deadline = (
                                trio.current_time() + self._graceful_timeout)
                        background.cancel_scope.cancel()
                finally:
                    lifespan_over.set()  # the app's shutdown runs once HTTP is done
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
            await self._http.serve_connection(stream, sock)
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
                    data = sock.recv(_RECV_SIZE)
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
