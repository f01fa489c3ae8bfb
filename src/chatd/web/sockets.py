"""GET /ws: the live stream, served straight off the socket.

Authentication comes from `?token=` (browsers cannot set headers on a WebSocket) or an
`Authorization: Bearer` header. A bad token gets the upgrade accepted and then closed with
code 4001 and the reason (browsers cannot read an HTTP rejection's status anyway). The
subprotocol picks the encoding: `chatd.json` (default) or `chatd.msgpack`.

Why not hypercorn's WebSocket support: an idle connection there costs ~44 KB and every
frame several event objects and task switches. Here a connection is one task (its reader,
parked in `wait_readable` while idle) and a small object, and writing needs no task at
all: the `LiveSession`s that have frames ready are queued, and one flusher task writes
each one's frames with a single non-blocking `send`, all of a commit batch's deliveries
in one pass. Only a socket whose kernel buffer is full gets a task of its own, which
waits for it to drain (aborting the connection after `server.send_timeout` without
progress); meanwhile nothing more is read from that client.

Containment (docs/architecture.md): bad frames get `error` frames and never end the
connection; protocol violations close that one connection with the RFC's close code; an
unexpected error in any shared task while serving a connection closes that connection
alone with 1011. Acks are checked as they are read and applied once per read.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import trio

from chatd.domain.ids import first_id_at
from chatd.domain.models import SendResult, Session
from chatd.errors import (
    BadRequest,
    ChatdError,
    HeadersTooLarge,
    HttpVersionNotSupported,
    MethodNotAllowed,
    Unauthorized,
    Unavailable,
    UpgradeRequired,
)
from chatd.pending import Pending
from chatd.protocol import frames
from chatd.protocol import owner as ops
from chatd.protocol import websocket as ws
from chatd.protocol.frames import Codec, FrameError
from chatd.protocol.handshake import (
    HandshakeError,
    HandshakeProblem,
    accept_response,
    head_length,
    read_opening_request,
    refusal_response,
)
from chatd.services.context import Services
from chatd.services.live import LiveSession, SessionClosed, SessionEnd
from chatd.services.users import cursors_from_home
from chatd.web.auth import parse_bearer
from chatd.web.client_address import socket_peer

log = logging.getLogger(__name__)

#: Seconds a client gets to send its opening request.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds a client gets to answer our close frame before the socket is closed anyway.
CLOSE_TIMEOUT = 1.0
#: Reads, and frames, in a row before the reader yields to other tasks: a flooding client
#: must not starve the others (a 64 KB read can hold ~9,000 tiny frames).
_READS_PER_YIELD = 4
_FRAMES_PER_YIELD = 64
_RECV_SIZE = 65_536
#: The largest WebSocket message the server builds from several frames (a catch-up of
#: big messages is split into several of these).
MAX_MESSAGE_BYTES = 256 * 1024
#: Seconds between checks for connections whose token has expired.
EXPIRY_CHECK_INTERVAL = 5.0
#: Seconds a closing connection waits for the user's home to say whether they are still
#: online on another shard (presence is best effort past it).
PRESENCE_TIMEOUT = 2.0
#: Seconds before a catch-up read whose owner could not be reached is tried again.
FETCH_RETRY_DELAY = 1.0

#: chatd's close codes (4000-4999 are for applications) and the RFC's, by why a session
#: ended. docs/api.md lists them for clients.
CLOSE_IDLE = 4000
CLOSE_UNAUTHORIZED = 4001
CLOSE_TOO_SLOW = 4008
CLOSE_TOO_MANY = 4029
#: RFC 6455's "try again later": the token could not be checked (its home shard is
#: unreachable). Not 4001, which a client takes for "log in again".
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_CODES = {
    SessionEnd.CONNECTION_CLOSED: ws.CLOSE_NORMAL,
    SessionEnd.SHUTTING_DOWN: ws.CLOSE_GOING_AWAY,
    SessionEnd.IDLE: CLOSE_IDLE,
    SessionEnd.UNAUTHORIZED: CLOSE_UNAUTHORIZED,
    SessionEnd.TOO_SLOW: CLOSE_TOO_SLOW,
    SessionEnd.INTERNAL_ERROR: ws.CLOSE_INTERNAL_ERROR,
}
#: A refused opening request, as HTTP.
_HANDSHAKE_ERRORS: dict[HandshakeProblem, type[ChatdError]] = {
    HandshakeProblem.MALFORMED: BadRequest,
    HandshakeProblem.HEAD_TOO_LARGE: HeadersTooLarge,
    HandshakeProblem.HTTP_VERSION: HttpVersionNotSupported,
    HandshakeProblem.METHOD: MethodNotAllowed,
    HandshakeProblem.NOT_AN_UPGRADE: UpgradeRequired,
    HandshakeProblem.WEBSOCKET_VERSION: UpgradeRequired,
    HandshakeProblem.BAD_KEY: BadRequest,
    HandshakeProblem.REFUSED: BadRequest,
}


class Connection:
    """One WebSocket connection: its socket, its protocol state and its `LiveSession`."""

    __slots__ = ("acks", "address", "codec", "drain_scope", "drained", "failed", "finished",
                 "inflight", "last_active", "live", "opcode_binary", "room", "scope", "session",
                 "sock", "sockets", "unsent", "ws")

    def __init__(self, sockets: LiveSockets, sock: socket.socket, codec: Codec,
                 session: Session, max_message: int, address: str | None = None) -> None:
        self.sockets = sockets
        self.sock = sock
        #: The client's address (server.trusted_proxies), for per-address rate limits.
        self.address = address
        self.codec = codec
        self.opcode_binary = codec == "msgpack"
        self.session = session
        self.ws = ws.WebSocketConnection(ws.Role.SERVER, max_message=max_message)
        self.live: LiveSession | None = None
        #: Bytes the kernel would not take yet; set while a drain task owns the socket.
        #: A bytearray so that appending and consuming are linear, never quadratic.
        self.unsent: bytearray | None = None
        self.drain_scope: trio.CancelScope | None = None
        self.drained: trio.Event | None = None  # the reader waits on it (back-pressure)
        self.finished = False
        self.failed = False  # an unexpected error was logged for this connection
        self.inflight = 0
        #: Acks read since the last apply: conversation_id -> the highest seq.
        self.acks: dict[int, int] = {}
        self.room: trio.Event | None = None  # set when a send slot frees up
        self.scope: trio.CancelScope | None = None
        self.last_active = trio.current_time()

    def ready(self, live: LiveSession) -> None:
        self.sockets.schedule(self)

    def push(self, frame: frames.OutFrame) -> None:
        if self.live is not None:
            self.live.push(frame)

    def write(self, data: bytes) -> None:
        """Write without waiting; whatever the kernel will not take now is handed to a
        drain task, and nothing more is taken from the session (nor read from the
        client) until it is written."""
        if self.finished:
            return
        if self.unsent is not None:
            self.unsent += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(data):
            self.unsent = bytearray(memoryview(data)[sent:])
            self.sockets.start_drain(self)

    def begin_close(self, code: int, reason: str) -> None:
        frame = self.ws.close(code, reason)
        if not frame or self.finished:
            return
        self.write(frame)
        if self.scope is not None:
            self.scope.deadline = min(self.scope.deadline, trio.current_time() + CLOSE_TIMEOUT)

    def fail(self, what: str, error: BaseException) -> None:
        """An unexpected error while serving this connection: log it once and close this
        connection alone with 1011, whatever shared task (reader, flusher, drain, reaper)
        ran into it."""
        if not self.failed:
            self.failed = True
            log.error("%s failed for one connection; closing it with 1011", what,
                      exc_info=error)
        if self.live is not None:
            self.live.close(SessionEnd.INTERNAL_ERROR, "internal error")
        self.begin_close(ws.CLOSE_INTERNAL_ERROR, "internal error")

    def abort(self) -> None:
        """Hang up now (a broken or stuck socket): the reader ends and closes it."""
        if self.scope is not None:
            self.scope.cancel()
        if self.drain_scope is not None:
            self.drain_scope.cancel()


class LiveSockets:
    """Every WebSocket connection of this shard, the flusher that writes to them and the
    reaper that closes idle ones."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._settings = services.config.websocket
        self._send_timeout = services.config.server.send_timeout
        self._max_message = services.config.server.max_request_bytes
        # Answers queued for one connection before its reader writes them itself.
        self._reply_backlog = max(1, self._settings.max_queue // 2)
        self._connections: set[Connection] = set()
        self._ready: list[Connection] = []
        self._work = trio.Event()
        self._drains: trio.Nursery | None = None
        # A batch's deliveries and answers are written as soon as it lands, in the
        # committer's step, instead of waking the flusher for them.
        services.committer.after_each_batch(self.flush_ready)
        # Receipts collected since the last flush go out at the next one, coalesced.
        self._receipts = services.receipts
        services.receipts.on_pending(self._wake)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The flusher, the reaper and the drain tasks; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._drains = nursery
            nursery.start_soon(self._reap_idle)
            task_status.started()
            await self._flush_forever()

    # -- writing --------------------------------------------------------------------------

    def _wake(self) -> None:
        self._work.set()  # (the flusher replaces the event each round: no bound method)

    def schedule(self, conn: Connection) -> None:
        self._ready.append(conn)
        self._work.set()

    def flush_ready(self) -> None:
        """Write what every scheduled connection has ready."""
        self._receipts.flush()
        ready, self._ready = self._ready, []
        for conn in ready:
            try:
                self._flush(conn)
            except Exception as exc:  # one connection's frames must not stop the others'
                conn.fail("writing frames", exc)

    async def _flush_forever(self) -> None:
        while True:
            await self._work.wait()
            self._work = trio.Event()
            self.flush_ready()
            # Sessions still catching up asked again; let readers and the committer run.
            await trio.lowlevel.checkpoint()

    def _flush(self, conn: Connection) -> None:
        live = conn.live
        if live is None or conn.finished or conn.unsent is not None:
            return  # a drain task reschedules the connection once the socket takes more
        try:
            batch = live.take_frames()
        except SessionClosed as closed:
            conn.begin_close(CLOSE_CODES[closed.end], closed.reason)
            return
        if live.behind:
            wanted = live.next_fetch()
            if wanted is not None:
                assert self._drains is not None, "LiveSockets.run is not running"
                self._drains.start_soon(self._fetch, conn, *wanted)
        if batch:
            # Several WebSocket messages when the frames are large (a catch-up of big
            # messages): each stays under MAX_MESSAGE_BYTES, so a client's frame buffer
            # does not need to hold megabytes and every message shows progress.
            binary = conn.opcode_binary
            conn.write(b"".join(conn.ws.send_message(message, binary=binary) for message in
                                frames.encode_messages(batch, conn.codec, MAX_MESSAGE_BYTES)))

    async def _fetch(self, conn: Connection, conversation_id: int, after: int) -> None:
        """Read what a session is owed from the conversation's owner (here or a peer),
        outside any commit; a failed read is tried again a second later."""
        live = conn.live
        assert live is not None
        query = ops.ReadLog(conversation_id, live.user_id, after, live.fetch_batch,
                            live.fetch_bytes)
        try:
            messages, head = await self._services.router.ask(query)
        except ChatdError:
            live.fetch_failed(conversation_id)
            await trio.sleep(FETCH_RETRY_DELAY)
            if not conn.finished:
                self.schedule(conn)
            return
        except Exception as exc:
            conn.fail("reading a catch-up", exc)
            return
        if not conn.finished:
            live.fetched(conversation_id, messages, head)

    async def _sync_positions(self, session: Session,
                              cursors: dict[int, int]) -> list[tuple[int, int, int]]:
        """Check a `sync` whole before anything changes: a conversation the user is not
        in, or a seq past the head (which would silence the conversation), refuses it."""
        positions = []
        for conversation_id, seq in cursors.items():
            conv = await self._services.messaging.member_view(session, conversation_id)
            if not 0 <= seq <= conv.head_seq:
                raise BadRequest(f"cursors: seq {seq} of conversation {conversation_id} is "
                                 f"outside 0..{conv.head_seq}", code="seq_out_of_range")
            floor = max(1, conv.members[session.user_id].joined_seq)
            positions.append((conversation_id, max(seq + 1, floor), conv.head_seq))
        return positions

    def start_drain(self, conn: Connection) -> None:
        assert self._drains is not None, "LiveSockets.run is not running"
        self._drains.start_soon(self._drain, conn)

    async def _drain(self, conn: Connection) -> None:
        try:
            if not conn.finished and await self._write_unsent(conn):
                conn.unsent = None
                self.schedule(conn)
                return
        except (OSError, ValueError, trio.ClosedResourceError, trio.BusyResourceError):
            pass  # the peer hung up, or the connection ended and closed its socket
        except Exception as exc:
            conn.fail("draining a socket", exc)
        finally:
            conn.drain_scope = None
            if conn.drained is not None:  # the reader waits for room: let it go on (or end)
                conn.drained.set()
                conn.drained = None
        conn.abort()

    async def _write_unsent(self, conn: Connection) -> bool:
        """Write `conn.unsent` as the socket takes it; False if it did not all go. The
        deadline is on progress, not on the total: a slow but steady reader is never cut
        off, one that takes nothing for `send_timeout` is."""
        with trio.CancelScope() as conn.drain_scope, \
                trio.move_on_after(self._send_timeout) as timer:
            while conn.unsent:
                await trio.lowlevel.wait_writable(conn.sock)
                try:
                    sent = conn.sock.send(conn.unsent)
                except BlockingIOError:
                    continue
                del conn.unsent[:sent]  # cheap: a bytearray consumes from the front in place
                timer.deadline = trio.current_time() + self._send_timeout
            return True
        if timer.cancelled_caught:
            log.info("a client read nothing for %.0f s; aborting its connection",
                     self._send_timeout)
        return False

    async def _reap_idle(self) -> None:
        """Close sockets idle past `idle_timeout` (4000) and those whose token has
        expired (4001), by one scan of every connection rather than a timer each."""
        timeout = self._settings.idle_timeout
        clock = self._services.clock
        while True:
            await trio.sleep(max(0.05, min(timeout / 4, EXPIRY_CHECK_INTERVAL)))
            cutoff = trio.current_time() - timeout
            now_ms = clock.now_ms()
            for conn in list(self._connections):
                live = conn.live
                if live is None:
                    continue
                if conn.session.expires_at <= now_ms:
                    live.close(SessionEnd.UNAUTHORIZED, "token_expired: the token has "
                               "expired; log in again")
                elif conn.last_active < cutoff:
                    live.close(SessionEnd.IDLE, f"no frame for {timeout:g} s")

    # -- a connection ---------------------------------------------------------------------

    async def serve(self, sock: socket.socket, received: bytes, peer: str | None = None) -> None:
        """Serve one connection whose first bytes (`received`) asked for /ws; returns when
        it is over. The caller closes the socket. `peer`: the TCP peer's host, when `sock`
        is not the TCP socket itself (TLS)."""
        try:
            handshake = await self._handshake(sock, received)
        except (OSError, trio.ClosedResourceError):
            return
        if handshake is None:
            return
        token, codec, rest, forwarded = handshake
        address = self._services.proxies.client_address(
            peer if peer is not None else socket_peer(sock), [forwarded] if forwarded else [])
        session: Session | None = None
        close: tuple[int, str] | None = None
        try:
            if not token:
                raise Unauthorized("send ?token=<token> or an Authorization header",
                                   code="missing_token")
            session = await self._services.users.authenticate(token)
        except ChatdError as exc:
            code = CLOSE_TRY_AGAIN_LATER if exc.status == 503 else CLOSE_UNAUTHORIZED
            close = (code, f"{exc.code}: {exc.message}"[:120])
        conn = Connection(self, sock, codec, session or _NOBODY, self._max_message, address)
        self._connections.add(conn)
        try:
            with trio.CancelScope() as conn.scope:
                if close is not None:
                    conn.begin_close(*close)
                    await self._read_loop(conn, b"")
                    return
                await self._run_session(conn, rest)
        except Exception as exc:
            # A bug met while serving this connection: it ends this connection only.
            conn.fail("serving a WebSocket", exc)
        finally:
            conn.finished = True
            if conn.drain_scope is not None:
                conn.drain_scope.cancel()
            self._connections.discard(conn)

    async def _handshake(self, sock: socket.socket,
                         received: bytes) -> tuple[str, Codec, bytes, str] | None:
        buffer = received
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            try:
                while (length := head_length(buffer)) is None:
                    data = await _receive(sock)
                    if not data:
                        return None
                    buffer += data
                request = read_opening_request(buffer[:length])
            except HandshakeError as exc:
                await _send_error(sock, _HANDSHAKE_ERRORS[exc.problem](exc.message),
                                  upgrade_hint=exc.problem in (
                                      HandshakeProblem.NOT_AN_UPGRADE,
                                      HandshakeProblem.WEBSOCKET_VERSION))
                return None
            codec: Codec = "json"
            chosen = None
            for name in request.subprotocols:
                if name in frames.SUBPROTOCOLS:
                    codec, chosen = frames.SUBPROTOCOLS[name], name
                    break
            query = parse_qs(request.query)
            token = (query.get("token") or [""])[0] or \
                parse_bearer(request.headers.get("authorization", "")) or ""
            await _send_all(sock, accept_response(request.key, chosen))
            # Repeated X-Forwarded-For headers arrive joined with ", " (one list).
            return token, codec, buffer[length:], request.headers.get("x-forwarded-for", "")
        return None  # too slow

    async def _run_session(self, conn: Connection, rest: bytes) -> None:
        services = self._services
        session = conn.session
        limit = self._settings.max_connections_per_user
        if len(services.hub.sessions_of(session.user_id)) >= limit:
            # Each connection costs memory and a catch-up: one token cannot open them
            # until the process runs out of file descriptors.
            conn.begin_close(CLOSE_TOO_MANY, f"at most {limit} connections per user")
            await self._read_loop(conn, rest)
            return
        live = LiveSession(user_id=session.user_id, device_id=session.device_id,
                           max_queue=self._settings.max_queue, on_ready=conn.ready,
                           opened_id=first_id_at(services.clock.now_ms()))
        conn.live = live
        hub = services.hub
        # Attached (and announced to the user's home) before asking where delivery
        # starts, so that nothing written meanwhile slips past: it is held until start.
        first = hub.attach(live)
        if first:
            services.delivery.came_online(session.user_id)
        try:
            # Connections of one device share its cursor map, so an ack on one cannot
            # move the device's cursor back below an ack on another.
            sibling = next((other for other in hub.sessions_of(session.user_id)
                            if other is not live and other.device_id == session.device_id),
                           None)
            try:
                cursors = sibling.acked if sibling is not None else await cursors_from_home(
                    services.router, session.device_id, session.user_id,
                    services.messaging.cursors_of)
                user = await services.users.get_user(session.user_id)
                starts = await services.messaging.delivery_starts(session, cursors)
            except Unavailable as exc:
                # A shard the start needs (the user's home) stopped answering after the
                # token was checked: the client should come back later, not take this
                # for a crash or a logout.
                conn.begin_close(CLOSE_TRY_AGAIN_LATER, f"{exc.code}: {exc.message}"[:120])
                await self._read_loop(conn, b"")
                return
            live.shows_reads = user.read_receipts
            live.hides_last_seen = user.hide_last_seen
            live.start(starts, cursors)
            await services.presence.settle(live, [conv for conv, _ in starts], user)
            await services.presence.came_online(live, first=first)
            # What waits on the device's to-device queue, then live (issue 14); a home
            # out of reach leaves it to be fetched when its link comes back.
            await services.to_device_feeds.start(live)
            await self._read_loop(conn, rest)
        finally:
            services.to_device_feeds.stop(live)
            # Nothing more is queued for a connection that has ended.
            live.close(SessionEnd.CONNECTION_CLOSED, "connection closed")
            if hub.detach(live):
                services.delivery.went_offline(session.user_id)
                last_seen = services.clock.now_ms()
                # Asks the user's home (bounded, and whatever cancelled this connection).
                with trio.move_on_after(PRESENCE_TIMEOUT, shield=True):
                    if await services.presence.went_offline(live, last_seen):
                        services.users.record_last_seen(session.user_id, last_seen)

    async def _read_loop(self, conn: Connection, data: bytes) -> None:
        sock = conn.sock
        protocol = conn.ws
        reads = handled = 0
        while True:
            if data:
                conn.last_active = trio.current_time()
                try:
                    events = protocol.receive_data(data)
                except ws.ProtocolError as exc:
                    conn.begin_close(exc.close_code, exc.reason)
                    return
                for event in events:
                    handled += 1
                    if handled >= _FRAMES_PER_YIELD:
                        handled = 0
                        if conn.acks:
                            self._apply_acks(conn)
                        await trio.lowlevel.checkpoint()
                    if isinstance(event, ws.TextMessage | ws.BytesMessage):
                        await self._on_frame(conn, event.data)
                    elif isinstance(event, ws.Ping):
                        conn.write(protocol.pong(event.payload))
                    elif isinstance(event, ws.CloseReceived):
                        conn.write(protocol.close(event.code))  # b"" if ours went first
                        return
                    if protocol.state is not ws.ConnectionState.OPEN:
                        break  # our close went out while handling: the rest is dropped
                if conn.acks:
                    # The receipts these acks produce go out with the flusher's next
                    # pass, together with every other reader's: a group post's 49
                    # receipts to its sender share its writes (flushing them from each
                    # reader was one send per receipt).
                    self._apply_acks(conn)
                reads += 1
                if reads >= _READS_PER_YIELD:
                    reads = 0
                    await trio.lowlevel.checkpoint()
            if conn.unsent is not None:
                # The client is not reading what we write: read nothing more from it
                # until it does. Its replies (pongs, errors, answers) cannot pile up, and
                # TCP pushes back on it instead. The drain aborts it if it never reads.
                conn.drained = trio.Event()
                await conn.drained.wait()
                continue
            if 0 < len(data) < _RECV_SIZE:
                # A short read emptied the socket: asking again would only fail with
                # EAGAIN (a system call and an exception per frame, at every ack).
                reads = 0
                await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(_RECV_SIZE)
            except BlockingIOError:
                reads = 0
                await trio.lowlevel.wait_readable(sock)
                data = b""
                continue
            except OSError:
                return
            if not data:
                return  # the peer hung up

    async def _wait_for_room(self, conn: Connection) -> None:
        """Bound the commands one connection has queued (sends, reads): past the bound,
        stop reading until an answer frees a slot, and TCP pushes back on the client.
        The shared commit queue is then never filled by one connection."""
        while conn.inflight >= self._settings.max_inflight_sends:
            conn.room = trio.Event()
            await conn.room.wait()

    def _apply_acks(self, conn: Connection) -> None:
        acks, conn.acks = conn.acks, {}
        live = conn.live
        assert live is not None
        messaging = self._services.messaging
        remote_hints: list[tuple[int, int, int]] = []
        for conversation_id, seq in acks.items():
            # Refused only if membership changed since the check: nothing to apply then.
            with contextlib.suppress(ChatdError):
                remote_hints += messaging.acknowledge(
                    conn.session, conversation_id, seq, live.acked, live.shows_reads,
                    live.follows(conversation_id))
        if remote_hints:
            # The device's home is another shard: one post per read carries them.
            self._services.users.post_cursor_hints(conn.session.user_id, remote_hints)

    async def _on_frame(self, conn: Connection, data: str | bytes) -> None:
        live = conn.live
        assert live is not None
        if live.queued >= self._reply_backlog:
            # A client pipelining requests fills its own queue with answers faster than
            # the flusher runs: write them now, and if the socket will not take them,
            # read nothing more until it does. A client that reads is never cut off for
            # its own answers; one that does not is cut off by the drain's deadline.
            while live.queued >= self._reply_backlog and conn.unsent is None \
                    and not conn.finished:
                self._flush(conn)
            if conn.unsent is not None:
                conn.drained = trio.Event()
                await conn.drained.wait()
        if len(data) > self._settings.max_frame_bytes:
            live.push(frames.error_frame(
                "frame_too_large",
                f"frames are limited to {self._settings.max_frame_bytes} bytes"))
            return
        try:
            frame = frames.decode_client_frame(data, conn.codec)
        except FrameError as exc:
            live.push(frames.error_frame(exc.code, exc.message, exc.req))
            return
        try:
            await self._handle(conn, live, frame)
        except ChatdError as exc:
            live.push(frames.error_from(exc, frame.req))

    async def _handle(self, conn: Connection, live: LiveSession,
                      frame: frames.ClientFrame) -> None:
        messaging = self._services.messaging
        session = conn.session
        if isinstance(frame, frames.SendFrame):
            await self._wait_for_room(conn)
            # Only a send that names versions pays for the check (docs/architecture.md).
            await self._services.keys.check_device_lists(frame.device_list_version)
            # Awaited here, in the reader: this socket's next frame waits for it, so
            # pipelined sends keep their order.
            attached = await messaging.attach(session, frame.conversation_id,
                                              frame.attachments)
            mentioned = await messaging.resolve_mentions(frame.content_type, frame.body,
                                                         list(frame.mentions))
            pending = messaging.start_send(
                session, conversation_id=frame.conversation_id,
                client_msg_id=frame.client_msg_id, content_type=frame.content_type,
                body=frame.body, attachments=attached, reply_to=frame.reply_to,
                mentions=mentioned, address=conn.address)
            conn.inflight += 1
            pending.add_done_callback(partial(_answer_send, conn, frame.req))
        elif isinstance(frame, frames.AckFrame):
            # Checked now, applied once per read: only the highest of a burst counts.
            messaging.check_ack(session, frame.conversation_id, frame.seq)
            if frame.seq > conn.acks.get(frame.conversation_id, -1):
                conn.acks[frame.conversation_id] = frame.seq
            if frame.req is not None:
                live.push(frames.ok_frame(frame.req))
        elif isinstance(frame, frames.ReadFrame):
            await self._wait_for_room(conn)
            marked = messaging.start_mark_read(session, frame.conversation_id, frame.seq,
                                               live.shows_reads)
            conn.inflight += 1
            marked.add_done_callback(partial(_answer_ok, conn, frame.req))
        elif isinstance(frame, frames.TypingFrame):
            await messaging.typing(session, frame.conversation_id)
            if frame.req is not None:
                live.push(frames.ok_frame(frame.req))
        elif isinstance(frame, frames.ReactFrame):
            await self._wait_for_room(conn)
            reacted = self._services.rich.start_react(
                session, frame.conversation_id, frame.seq, frame.emoji,
                remove=not frame.emoji, address=conn.address)
            conn.inflight += 1
            reacted.add_done_callback(partial(_answer_ok, conn, frame.req))
        elif isinstance(frame, frames.PingFrame):
            live.push(frames.pong_frame(frame.req))
        elif isinstance(frame, frames.SyncFrame):
            live.sync(await self._sync_positions(session, frame.cursors))
            if frame.req is not None:
                live.push(frames.ok_frame(frame.req))
        elif isinstance(frame, frames.ToDeviceAckFrame):
            # Awaited: the device's next frames wait for its home to delete them.
            await self._services.to_device.ack(session, frame.up_to)
            if frame.req is not None:
                live.push(frames.ok_frame(frame.req))


#: Stands in for the session of a connection refused at authentication (it reads nothing).
_NOBODY = Session(user_id=0, device_id=0, token_hash=b"", expires_at=2**63)


def _release(conn: Connection) -> None:
    conn.inflight -= 1
    if conn.room is not None:
        conn.room.set()
        conn.room = None


def _answer_send(conn: Connection, req: str, pending: Pending[SendResult]) -> None:
    _release(conn)
    if pending.error is not None:
        conn.push(frames.error_from(_as_chatd_error(pending.error), req))
        return
    result = pending.result
    assert result is not None
    conn.push(frames.sent_frame(req, result.message_id, result.conversation_id,
                                result.seq, result.ts))


def _answer_ok(conn: Connection, req: str | None, pending: Pending[Any]) -> None:
    _release(conn)
    if pending.error is not None:
        conn.push(frames.error_from(_as_chatd_error(pending.error), req))
    elif req is not None:
        conn.push(frames.ok_frame(req))


def _as_chatd_error(error: BaseException) -> ChatdError:
    return error if isinstance(error, ChatdError) else ChatdError(str(error))


async def _receive(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(_RECV_SIZE)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def _send_error(sock: socket.socket, error: ChatdError, *,
                      upgrade_hint: bool = False) -> None:
    """Answer a refused opening request (a peer that has gone is `serve`'s OSError)."""
    body = frames.OutFrame(error.to_json()).json()
    await _send_all(sock, refusal_response(error.status, body, upgrade_hint=upgrade_hint))
