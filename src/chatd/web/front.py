"""The shard's listener: one port for REST and the live stream, in clear or over TLS.

Each accepted connection's request line decides who serves it. `GET /ws` goes to chatd's
own WebSocket path (`web/sockets.py`), which keeps an idle connection to a few KB;
everything else goes to hypercorn's HTTP server and the quart-trio app
(`web/hypercorn_adapter.py`, the one module that knows hypercorn's internals), with the
bytes already read put back in front of the stream.

With a certificate (`web/tls.py`) every connection is TLS, terminated here with
`trio.SSLStream` before the request line is read; a client that negotiates HTTP/2 by ALPN
goes straight to hypercorn (HTTP/2 carries no `/ws` here). chatd's WebSocket transport
works on a plain non-blocking socket (it writes without a task, see `web/sockets.py`), so
a WSS connection is bridged: the transport gets one end of a socket pair, and two small
pump tasks move bytes between the other end and the TLS stream. That costs a TLS
WebSocket two more tasks, two descriptors and a copy per write; TLS itself (OpenSSL's
buffers, the crypto) costs more than that, and a deployment with many connections can
terminate TLS in a reverse proxy instead (docs/deploy.md).

    FrontServer.run
    ├── lifespan          quart's startup/shutdown (ASGI lifespan)
    ├── LiveSockets.run   the WebSocket flusher, idle reaper and drain tasks
    └── connections       one task per accepted socket: HTTP via hypercorn, or /ws
                          (over TLS: plus the two pumps of its bridge)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket

import trio

from chatd.protocol.handshake import path_of
from chatd.web.client_address import socket_peer
from chatd.web.hypercorn_adapter import HttpServer
from chatd.web.media_downloads import MediaDownloads, is_media_download
from chatd.web.sockets import HANDSHAKE_TIMEOUT, LiveSockets
from chatd.web.tls import ServerCertificate

log = logging.getLogger(__name__)

#: The most of a request line read before deciding who serves the connection.
_MAX_REQUEST_LINE = 8192
_RECV_SIZE = 65_536
#: accept() failures that mean "out of a resource for now", not "the listener is broken".
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                            errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
#: Kernel buffer of each end of a WSS bridge's socket pair. Small, so that a client that
#: stops reading fills it soon and the transport's own back-pressure (its drain task and
#: the 4008 bound) takes over, as on a plain TCP socket.
_BRIDGE_BUFFER = 64 * 1024


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A connection's stream that first returns bytes already read from it (the request
    line read to route the connection).

    Over TLS, `send_eof` does nothing: TLS has no half-close, and the `aclose` that follows
    it in hypercorn's close sends the close_notify."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
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
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            await self._stream.send_eof()
        else:
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self._stream.aclose()


def _routes_to_live_stream(request_line: bytes) -> bool:
    parts = request_line.decode("latin-1").split(" ")
    return len(parts) == 3 and path_of(parts[1]) == "/ws"


class FrontServer:
    def __init__(self, http: HttpServer, sockets: LiveSockets, *, host: str, port: int,
                 backlog: int, graceful_timeout: float, send_timeout: float,
                 certificate: ServerCertificate | None = None,
                 media: MediaDownloads | None = None) -> None:
        self._http = http
        self._sockets = sockets
        #: GET/HEAD of /media/… served directly (web/media_downloads.py).
        self._media = media
        self._host = host
        self._port = port
        self._backlog = backlog
        self._graceful_timeout = graceful_timeout
        self._send_timeout = send_timeout
        #: Read at each accept, so a reloaded certificate serves the next connection.
        self._certificate = certificate

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
                                scheme = "http" if self._certificate is None else "https"
                                task_status.started(f"{scheme}://{shown}:{port}")
                                await shutdown.wait()
                                accepting.cancel_scope.cancel()
                            if self._media is not None:
                                self._media.begin_shutdown()
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
            if self._certificate is not None:
                await self._serve_tls(sock, self._certificate)
                return
            received = await self._read_request_line(sock)
            if received is None:
                return
            request_line = received.split(b"\r\n", 1)[0]
            if _routes_to_live_stream(request_line):
                await self._sockets.serve(sock, received)
                return
            if self._media is not None and is_media_download(request_line):
                rest = await self._media.serve(sock, received)
                if rest is None:
                    return
                received = rest  # another route next: hypercorn's from here
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

    # -- TLS --------------------------------------------------------------------------------

    async def _serve_tls(self, sock: socket.socket, certificate: ServerCertificate) -> None:
        transport = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        # https_compatible: HTTP clients commonly close without a close_notify, and
        # waiting for theirs on close would only hold the connection.
        stream = trio.SSLStream(transport, certificate.context, server_side=True,
                                https_compatible=True)
        received = b""
        alpn: str | None = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as waited:
            try:
                await stream.do_handshake()
                alpn = stream.selected_alpn_protocol()
                if alpn != "h2":  # HTTP/2 is hypercorn's; chatd's /ws is HTTP/1.1 only
                    received = await _read_request_line_from(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # Not TLS, a certificate the client refused, a client that went away.
                log.debug("TLS connection failed before a request: %r", exc.__cause__ or exc)
                return
        if waited.cancelled_caught or (alpn != "h2" and not received):
            return
        if alpn != "h2" and _routes_to_live_stream(received.split(b"\r\n", 1)[0]):
            await self._bridge_live_stream(stream, received, socket_peer(sock))
            return
        await self._http.serve_connection(PrefixedStream(stream, received), sock, tls=True,
                                          alpn=alpn)

    async def _bridge_live_stream(self, stream: trio.SSLStream[trio.SocketStream],
                                  received: bytes, peer: str | None) -> None:
        """Serve /ws over TLS: the transport gets `inner`, the pumps join `outer` to the
        TLS stream. `peer`: the client's TCP host (`inner`'s peer is the pair's end)."""
        inner, outer_sock = socket.socketpair()
        for end in (inner, outer_sock):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BRIDGE_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BRIDGE_BUFFER)
        inner.setblocking(False)
        outer = trio.SocketStream(trio.socket.from_stdlib_socket(outer_sock))
        written = trio.Event()
        try:
            async with trio.open_nursery() as pumps:
                pumps.start_soon(_pump_from_client, stream, outer)
                pumps.start_soon(_pump_to_client, outer, stream, written)
                try:
                    await self._sockets.serve(inner, received, peer)
                finally:
                    trio.lowlevel.notify_closing(inner)
                    inner.close()
                # What the transport wrote last (its close frame) may still be in the
                # pair: it gets as long as any write to reach the client.
                with trio.move_on_after(self._send_timeout):
                    await written.wait()
                pumps.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(outer)
            await trio.aclose_forcefully(stream)


async def _read_request_line_from(stream: trio.abc.ReceiveStream) -> bytes:
    received = b""
    while b"\r\n" not in received and len(received) < _MAX_REQUEST_LINE:
        data = await stream.receive_some(_RECV_SIZE)
        if not data:
            break
        received += data
    return received


async def _pump_from_client(client: trio.abc.ReceiveStream, outer: trio.SocketStream) -> None:
    """Client → transport, until the client is done; then the transport reads the end of
    the stream, as it would on a plain socket."""
    try:
        while data := await client.receive_some(_RECV_SIZE):
            await outer.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await outer.send_eof()


async def _pump_to_client(outer: trio.SocketStream, client: trio.abc.SendStream,
                          written: trio.Event) -> None:
    """Transport → client, until the transport has closed its end and all it wrote is
    sent. If the client cannot be written to, the transport's end is shut down, so that
    its next write fails and it ends the session as on a broken socket."""
    try:
        while data := await outer.receive_some(_RECV_SIZE):
            await client.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        with contextlib.suppress(OSError):
            outer.socket.shutdown(socket.SHUT_RDWR)
    finally:
        written.set()
