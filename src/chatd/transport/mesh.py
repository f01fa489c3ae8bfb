"""The shard mesh: one authenticated link to every peer shard, kept up.

`Mesh.run()` binds the listener, dials the peers whose names sort after ours (the others
dial us: `chatd.protocol.mesh.dials`) and serves every link until cancelled. Each link
runs the handshake of `chatd.protocol.mesh`, then a `Link` (`transport/link.py`) until it
closes; a dialer then redials with jittered exponential backoff. docs/mesh.md is the
full description (wire format, liveness, queues, failures).

Containment: nothing a connection sends, before or after its handshake, ends more than
that connection; the listener, the dialers and every other link go on. Problems are
logged once per peer and reason while they repeat (a peer refused every two seconds
does not fill the log), and again when the reason changes or after a link was up.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import ssl
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import trio

from chatd.pending import Pending
from chatd.protocol.mesh import (
    HandshakeRefused,
    MeshConnection,
    MeshProtocolError,
    Role,
    dials,
)
from chatd.transport.errors import PeerUnavailable
from chatd.transport.flusher import Flusher
from chatd.transport.link import Link, MeshHandler, handshake, say_bye
from chatd.transport.options import MeshOptions, PeerAddress
from chatd.transport.statistics import PeerStatistics, prometheus_lines

log = logging.getLogger(__name__)

#: The shortest cluster secret accepted (bytes); 32 random bytes are recommended.
MIN_SECRET_BYTES = 16
#: Distinct problem keys remembered for logging once; past this the memory starts over.
_MAX_PROBLEMS = 1024


class _Peer:
    __slots__ = ("address", "dialed", "link", "stats")

    def __init__(self, address: PeerAddress, dialed: bool) -> None:
        self.address = address
        self.dialed = dialed  # we dial it (else it dials us)
        self.link: Link | None = None
        self.stats = PeerStatistics()


class Mesh:
    """This shard's end of the mesh. Construct it, then `await nursery.start(mesh.run)`
    (which returns the bound port); `request` and `post` work once a peer is up."""

    def __init__(self, *, shard: str, listen: tuple[str, int], peers: Sequence[PeerAddress],
                 secret: bytes, ring_signature: str, boot_id: str, handler: MeshHandler,
                 options: MeshOptions = MeshOptions(),  # noqa: B008  # frozen, shared safely
                 server_ssl: ssl.SSLContext | None = None,
                 client_ssl: ssl.SSLContext | None = None) -> None:
        names = [peer.name for peer in peers]
        if not shard:
            raise ValueError("the shard needs a name")
        if len(set(names)) != len(names):
            raise ValueError(f"peer names must be unique, got {names}")
        if shard in names:
            raise ValueError(f"shard {shard} is listed among its own peers")
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the cluster secret must be at least {MIN_SECRET_BYTES} bytes "
                             f"(32 random bytes are recommended), got {len(secret)}")
        if (server_ssl is None) != (client_ssl is None):
            raise ValueError("TLS on the mesh needs both server_ssl and client_ssl: every "
                             "shard both accepts and dials")
        self.shard = shard
        self._listen = listen
        self._secret = secret
        self._ring_signature = ring_signature
        self._boot_id = boot_id
        self._handler = handler
        self._options = options
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._peers = {peer.name: _Peer(peer, dials(shard, peer.name)) for peer in peers}
        self._up_callbacks: list[Callable[[str, str], None]] = []
        self._down_callbacks: list[Callable[[str], None]] = []
        self._random = random.Random()
        self._handshakes = 0
        # Inbound connections still in their handshake, oldest first: when the table is
        # full the oldest is dropped for the newcomer, so connections that never finish
        # (an attacker's, idle) cannot keep a real peer out; a peer's handshake takes a
        # round trip, an attacker would have to open `max_handshakes` connections within
        # it to crowd one out.
        self._inbound: dict[int, trio.CancelScope] = {}
        self._inbound_ids = itertools.count()
        self._problems: dict[str, str] = {}
        self._running = False
        #: Writes plain links' frames at the end of each scheduler pass, while `run` runs.
        self._flusher: Flusher | None = None
        #: The port the listener is bound to, once `run` has started.
        self.port: int | None = None

    # -- the public surface ---------------------------------------------------------------

    @property
    def peer_names(self) -> list[str]:
        return list(self._peers)

    def is_up(self, peer: str) -> bool:
        state = self._peers.get(peer)
        return state is not None and state.link is not None

    def boot_id_of(self, peer: str) -> str | None:
        """The boot id `peer` gave at its latest handshake (kept while it is down), or None
        if it never connected."""
        state = self._peers.get(peer)
        return None if state is None else state.stats.boot_id

    async def request(self, peer: str, method: str, body: Any, *,
                      timeout: float | None = None) -> Any:  # noqa: ASYNC109  # sent as deadline_ms
        """`peer`'s handler's answer to `method(body)`. Raises PeerUnavailable at once if
        the peer is down or its queue is full, PeerTimeout if no answer comes within
        `timeout` (default `options.request_timeout`), PeerUnavailable if the link drops
        meanwhile, and the peer's own ChatdError if it answered with one."""
        state = self._peer(peer)
        link = state.link
        if link is None:
            state.stats.requests_sent += 1
            state.stats.requests_failed += 1
            raise PeerUnavailable(f"shard {peer} is unreachable: no link to it is up")
        return await link.request(method, body,
                                  self._options.request_timeout if timeout is None else timeout)

    def start_request(self, peer: str, method: str, body: Any, *,
                      timeout: float | None = None) -> Pending[Any]:
        """`request` without a task: queued now, in order with other requests and posts
        to `peer`; the `Pending` finishes with the answer, or fails as `request` raises
        (at once with PeerUnavailable when the peer is down)."""
        state = self._peer(peer)
        link = state.link
        if link is None:
            state.stats.requests_sent += 1
            state.stats.requests_failed += 1
            return Pending.failed(
                PeerUnavailable(f"shard {peer} is unreachable: no link to it is up"))
        return link.start_request(
            method, body, self._options.request_timeout if timeout is None else timeout)

    def post(self, peer: str, method: str, body: Any) -> bool:
        """Queue a one-way `method(body)` for `peer`; False (and dropped) if it is down or
        its queue is full. Never blocks."""
        state = self._peer(peer)
        link = state.link
        if link is None:
            state.stats.posts_dropped += 1
            return False
        return link.post(method, body)

    def on_peer_up(self, callback: Callable[[str, str], None]) -> None:
        """Call `callback(peer, boot_id)` after each successful handshake with a peer (a
        boot id other than the last one means the peer restarted)."""
        self._up_callbacks.append(callback)

    def on_peer_down(self, callback: Callable[[str], None]) -> None:
        """Call `callback(peer)` when a peer's link closes (its requests have failed)."""
        self._down_callbacks.append(callback)

    def prometheus(self) -> list[str]:
        """`statistics()` as Prometheus text lines (for /metrics)."""
        return prometheus_lines(self.statistics())

    def statistics(self) -> dict[str, PeerStatistics]:
        result = {}
        for name, state in self._peers.items():
            snapshot = state.stats.snapshot()
            if state.link is not None:
                snapshot.queue_frames = state.link.queued_frames
                snapshot.queue_bytes = state.link.queued_bytes
            result[name] = snapshot
        return result

    def _peer(self, peer: str) -> _Peer:
        try:
            return self._peers[peer]
        except KeyError:
            raise ValueError(f"shard {self.shard} has no peer {peer!r}; its peers are "
                             f"{', '.join(self._peers) or 'none'}") from None

    # -- running --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Listen, dial and serve links until cancelled; `task_status.started(port)` once
        the listener is bound (port 0 in `listen` picks a free one)."""
        if self._running:
            raise RuntimeError(f"Mesh.run of shard {self.shard} is already running")
        self._running = True
        host, port = self._listen
        flusher = self._flusher = Flusher(trio.lowlevel.current_trio_token())
        trio.lowlevel.add_instrument(flusher)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host or None)
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(trio.serve_listeners, self._serve_accepted,
                                           listeners, handler_nursery=nursery))
                for state in self._peers.values():
                    if state.dialed:
                        state.stats.state = "connecting"
                        nursery.start_soon(self._dial_forever, state)
                log.info("mesh of shard %s listening on %s:%d (peers: %s)", self.shard,
                         host or "*", self.port, ", ".join(self._peers) or "none")
                task_status.started(self.port)
        finally:
            self._running = False
            self._flusher = None
            with contextlib.suppress(KeyError):  # (already removed if it ever raised)
                trio.lowlevel.remove_instrument(flusher)
            for state in self._peers.values():
                state.stats.state = "down"

    async def _dial_forever(self, state: _Peer) -> None:
        options = self._options
        delay = options.reconnect_min
        while True:
            try:
                if await self._dial(state):
                    delay = options.reconnect_min  # it was up: come back quickly
            except Exception:  # a bug of ours must not end the mesh: retry later
                log.exception("mesh: dialing %s failed", state.address.name)
            state.stats.state = "connecting"
            await trio.sleep(self._random.uniform(delay / 2, delay))
            delay = min(delay * 2, options.reconnect_max)

    async def _dial(self, state: _Peer) -> bool:
        """One attempt: connect, handshake, serve the link. True if a link was up."""
        address = state.address
        try:
            with trio.fail_after(self._options.handshake_timeout):
                stream = await trio.open_tcp_stream(address.host, address.port)
        except (OSError, trio.TooSlowError) as exc:
            state.stats.connect_failures += 1
            reason = "timed out" if isinstance(exc, trio.TooSlowError) else (
                exc.strerror or str(exc))
            self._problem(address.name, logging.WARNING,
                          f"mesh: cannot connect to peer {address.name} at {address.host}:"
                          f"{address.port}: {reason}")
            return False
        where = f"{address.host}:{address.port}"
        try:
            return await self._serve(stream, Role.DIALER, address.name, where)
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_accepted(self, stream: trio.SocketStream) -> None:
        # trio.serve_listeners closes the stream after this returns.
        try:
            host, port = stream.socket.getpeername()[:2]
            where = f"{host}:{port}"
        except OSError:
            return  # it is gone already
        if len(self._inbound) >= self._options.max_handshakes:
            self._problem("handshakes", logging.WARNING,
                          f"mesh: {len(self._inbound)} connections are in their handshake; "
                          "dropping the oldest for each new one")
            oldest = next(iter(self._inbound))
            self._inbound.pop(oldest).cancel()
        token = next(self._inbound_ids)
        with trio.CancelScope() as scope:
            self._inbound[token] = scope
            try:
                await self._serve(stream, Role.ACCEPTOR, None, where,
                                  authenticated=lambda: self._inbound.pop(token, None))
            except Exception:  # a bug of ours must not end the listener
                log.exception("mesh: serving the connection from %s failed", where)
            finally:
                self._inbound.pop(token, None)

    async def _serve(self, raw: trio.SocketStream, role: Role, expected: str | None,
                     where: str, authenticated: Callable[[], object] = lambda: None) -> bool:
        """Handshake on one connection, then serve its link; True if a link was up.
        `authenticated` is called once the peer has proven itself."""
        stream: trio.abc.Stream = raw
        if role is Role.DIALER and self._client_ssl is not None:
            assert expected is not None
            stream = trio.SSLStream(raw, self._client_ssl,
                                    server_hostname=self._peers[expected].address.host)
        elif role is Role.ACCEPTOR and self._server_ssl is not None:
            stream = trio.SSLStream(raw, self._server_ssl, server_side=True)
        connection = MeshConnection(
            role, shard=self.shard, secret=self._secret, ring_signature=self._ring_signature,
            boot_id=self._boot_id, peers=self._peers.keys(), peer=expected,
            max_frame_bytes=self._options.max_frame_bytes)
        self._handshakes += 1
        try:
            with trio.fail_after(self._options.handshake_timeout):
                established, first = await handshake(stream, connection)
        except HandshakeRefused as refused:
            self._failed_handshake(connection, expected)
            await say_bye(stream, connection, refused.reason)
            self._problem(self._problem_key(connection, expected, where), logging.ERROR,
                          f"mesh: refused the link with {where.rsplit(':', 1)[0]}: "
                          f"{refused.reason}")
            return False
        except (MeshProtocolError, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError) as exc:
            self._failed_handshake(connection, expected)
            if isinstance(exc, MeshProtocolError):
                await say_bye(stream, connection, exc.reason)
                reason = exc.reason
            elif isinstance(exc, trio.TooSlowError):
                reason = f"no handshake within {self._options.handshake_timeout:g} s"
            else:
                reason = f"the connection broke during the handshake: {_cause(exc)}"
            # By host: the source port changes with every connection, and a flood of
            # them must not become a flood of log lines.
            self._problem(self._problem_key(connection, expected, where), logging.WARNING,
                          f"mesh: dropped a connection from {where.rsplit(':', 1)[0]}: "
                          f"{reason}")
            return False
        finally:
            self._handshakes -= 1
        authenticated()
        state = self._peers[established.peer]
        link = Link(shard=self.shard, peer=established.peer, boot_id=established.boot_id,
                    stream=stream, connection=connection, handler=self._handler,
                    options=self._options, stats=state.stats,
                    on_close=partial(self._detach, state), flusher=self._flusher)
        self._attach(state, link)
        await link.run(first)  # it detaches itself as it closes
        return True

    # -- peers going up and down ----------------------------------------------------------

    def _attach(self, state: _Peer, link: Link) -> None:
        old = state.link
        if old is not None:  # the peer redialed before we saw its old link die
            log.warning("mesh: peer %s connected again (boot id %s) while its link (boot id "
                        "%s) was up; replacing that link", link.peer, link.boot_id,
                        old.boot_id)
            old.close("replaced by a new link from the peer")  # detaches it
        state.link = link
        stats = state.stats
        stats.links += 1
        stats.reconnects = stats.links - 1
        stats.state = "up"
        stats.boot_id = link.boot_id
        self._problems.pop(link.peer, None)
        log.info("mesh link to %s is up (boot id %s)", link.peer, link.boot_id)
        for callback in self._up_callbacks:
            try:
                callback(link.peer, link.boot_id)
            except Exception:
                log.exception("an on_peer_up callback failed for %s", link.peer)

    def _detach(self, state: _Peer, link: Link) -> None:
        """`link` has closed (its requests have failed): the peer is down until the next."""
        if state.link is not link:
            return
        state.link = None
        state.stats.state = "connecting" if state.dialed and self._running else "down"
        log.info("mesh link to %s is down: %s", link.peer, link.close_reason)
        for callback in self._down_callbacks:
            try:
                callback(link.peer)
            except Exception:
                log.exception("an on_peer_down callback failed for %s", link.peer)

    # -- logging problems once --------------------------------------------------------------

    def _failed_handshake(self, connection: MeshConnection, expected: str | None) -> None:
        name = expected or connection.peer
        if name in self._peers:
            self._peers[name].stats.connect_failures += 1

    def _problem_key(self, connection: MeshConnection, expected: str | None,
                     where: str) -> str:
        name = expected or connection.peer
        if name in self._peers:
            return name
        return where.rsplit(":", 1)[0]  # an unknown party: by host

    def _problem(self, key: str, level: int, message: str) -> None:
        """Log `message` unless it is what was logged last for `key` (then at DEBUG)."""
        if self._problems.get(key) == message:
            log.debug("%s (again)", message)
            return
        if len(self._problems) >= _MAX_PROBLEMS:
            self._problems.clear()
        self._problems[key] = message
        log.log(level, "%s", message)


def _cause(error: BaseException) -> str:
    cause = error.__cause__ or error.__context__
    return str(cause or error) or type(cause or error).__name__
