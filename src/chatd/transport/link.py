"""One open mesh link: its reader, its writer, its heartbeat and its requests in flight.

A `Link` starts once the handshake is done (`handshake()` below) and lives until the
connection ends; a reconnect is a new `Link`. Rules it keeps:

- **Order.** The reader hands requests and posts to the handler synchronously, in the
  order they arrived: what one task sent in order is handled in order.
- **Writing.** Frames are encoded when queued, into one buffer. On a plain TCP link the
  mesh's `Flusher` writes the buffer with one non-blocking write at the end of the
  scheduler pass that queued it (`flusher.py`): no task wakes for it, and everything one
  pass queued shares the syscall. Only what the kernel would not take, and every frame of
  a TLS link, goes to the writer task, which sends all that is queued in one `send_all`
  per wake-up. Either way a burst costs one syscall, not one per frame (STACK-NOTES: 47k
  frames/s one per send, 176k/s sixty-four per send), and frames leave in queue order:
  the flusher never writes while the writer holds part of the queue.
- **Reading.** A plain TCP link reads its socket's descriptor directly (`wait_readable`,
  then reads until a short one), not through `SocketStream.receive_some`, which costs a
  pass of the scheduler per read and a failing `recv` before every wait.
- **Bounds.** The queue holds at most `queue_frames` frames and `queue_bytes` bytes;
  past that a request fails at once and a post is dropped. Answers to the peer are not
  dropped (the peer's own queue bounds its requests; `max_inbound_requests` bounds those
  still being worked on).
- **Failure.** Closing a link fails every request in flight on it at once; a late answer
  to a request that gave up is dropped. Nothing the peer sends, and no error of the
  handler, ends more than this link; the handler's errors do not even end the link.
"""

from __future__ import annotations

import contextlib
import heapq
import inspect
import itertools
import logging
import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import trio

from chatd.errors import ChatdError, PayloadTooLarge
from chatd.pending import Pending
from chatd.protocol.mesh import (
    Bye,
    Established,
    Event,
    FrameTooLarge,
    MeshConnection,
    MeshProtocolError,
    Ping,
    Post,
    Request,
    Response,
    State,
)
from chatd.transport.errors import PeerTimeout, PeerUnavailable, remote_error
from chatd.transport.flusher import Flusher
from chatd.transport.options import MeshOptions
from chatd.transport.statistics import PeerStatistics

log = logging.getLogger("chatd.transport.mesh")

RECEIVE_SIZE = 65_536
#: A big batch is written in pieces this size, so the heartbeat sees progress (or none).
SEND_CHUNK = 256 * 1024
#: Seconds a BYE may take to go out when a link closes.
BYE_TIMEOUT = 0.1


class MeshHandler(Protocol):
    """What a shard does with its peers' requests and posts (the services, wired in)."""

    def handle_request(self, peer: str, method: str, body: Any) -> Any:
        """Called synchronously, in arrival order. Returns the answer's body, an awaitable
        of it, or a `Completion`; raising (or finishing with) a ChatdError answers that
        error, anything else a 500 `internal`."""
        ...

    def handle_post(self, peer: str, method: str, body: Any) -> None:
        """Called synchronously, in arrival order (interleaved with requests)."""
        ...


class Completion(Protocol):
    """A result that announces itself, as `chatd.storage.Pending` does: answered from
    the callback, with no task per request."""

    error: BaseException | None
    result: Any

    def add_done_callback(self, callback: Callable[[Any], None]) -> None: ...


class _Call:
    """A request of ours waiting for its answer. Either its task sleeps in
    `wait_task_rescheduled`, or (`start_request`) a `Pending` stands for it; either is
    told once, by whoever pops the call from `Link._calls` first: the answer, the
    deadline, or the link closing."""

    __slots__ = ("deadline", "error", "method", "pending", "result", "started", "task")

    def __init__(self, method: str, started: float, deadline: float,
                 pending: Pending[Any] | None = None) -> None:
        self.method = method
        self.started = started
        self.deadline = deadline
        self.pending = pending
        self.task = trio.lowlevel.current_task() if pending is None else None
        self.result: Any = None
        self.error: ChatdError | None = None

    def finish(self) -> None:
        if self.pending is not None:
            self.pending.result = self.result
            self.pending.error = self.error
            self.pending.finish()
        else:
            assert self.task is not None
            trio.lowlevel.reschedule(self.task)


async def handshake(stream: trio.abc.Stream, connection: MeshConnection,
                    ) -> tuple[Established, list[Event]]:
    """Run the handshake on `stream`: the peer's `Established` and the frames it sent
    right after its proof. Raises MeshProtocolError (HandshakeRefused included) or a
    stream error; the caller bounds it in time."""
    await stream.send_all(connection.data_to_send())
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise MeshProtocolError("the peer closed the connection during the handshake")
        events = connection.receive_data(data)
        reply = connection.data_to_send()
        if reply:
            await stream.send_all(reply)
        if events:  # before the link is open, the only event is Established
            first = events[0]
            assert isinstance(first, Established), first
            return first, events[1:]


async def say_bye(stream: trio.abc.Stream, connection: MeshConnection, reason: str) -> None:
    """Tell the peer why we close, if the stream takes it within BYE_TIMEOUT (also while
    our task is being cancelled: this is how a shutdown is announced)."""
    data = connection.bye(reason)
    if not data:
        return
    with trio.move_on_after(BYE_TIMEOUT, shield=True), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
        await stream.send_all(data)


class Link:
    """An open link to `peer`. `run()` serves it until it closes; `close()` ends it from
    anywhere, at once, failing its requests in flight."""

    __slots__ = ("_buffer", "_calls", "_closed", "_connection", "_deadlines", "_fd", "_flusher",
                 "_handler", "_ids", "_inbound", "_nursery", "_on_close", "_options",
                 "_progressed", "_queued", "_received", "_say_bye", "_scope", "_sending",
                 "_stats", "_stream", "_timer", "_writer", "boot_id", "close_reason", "peer",
                 "shard")

    def __init__(self, *, shard: str, peer: str, boot_id: str, stream: trio.abc.Stream,
                 connection: MeshConnection, handler: MeshHandler, options: MeshOptions,
                 stats: PeerStatistics, on_close: Callable[[Link], None] | None = None,
                 flusher: Flusher | None = None) -> None:
        self.shard = shard
        self.peer = peer
        self.boot_id = boot_id
        self._stream = stream
        self._connection = connection
        self._handler = handler
        self._options = options
        self._stats = stats
        #: Told synchronously when the link closes, after its requests have failed.
        self._on_close = on_close
        #: Frames encoded and waiting for the writer, and how many.
        self._buffer = bytearray()
        self._queued = 0
        self._writer = trio.lowlevel.ParkingLot()
        #: A plain TCP stream is read and written on its file descriptor directly, and
        #: its frames are written by `flusher` (see the module's docstring); a TLS stream
        #: (or no flusher) goes through the stream and the writer task.
        self._flusher: Flusher | None = None
        self._fd = -1
        if flusher is not None and isinstance(stream, trio.SocketStream):
            self._flusher = flusher
            self._fd = stream.socket.fileno()
        #: Part of the queue is being written and the rest must wait for it: the writer
        #: is inside `send_all`, or the flusher left a remainder for it. `_progressed`: a
        #: piece went out since the last heartbeat tick. `_received`: data came since the
        #: last tick.
        self._sending = False
        self._progressed = False
        self._received = True
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count(1)
        #: (deadline, id) of requests in flight, earliest first, for the one timer task
        #: that fails them (a cancel scope per request cost a third of a request's CPU).
        #: Answered requests leave their entry behind until it comes up or is compacted.
        self._deadlines: list[tuple[float, int]] = []
        self._timer = trio.CancelScope()
        #: The peer's requests whose answers are still being worked on.
        self._inbound = 0
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._say_bye = False
        self.close_reason = ""

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_frames(self) -> int:
        return self._queued

    @property
    def queued_bytes(self) -> int:
        return len(self._buffer)

    # -- the tasks ------------------------------------------------------------------------

    async def run(self, first: Sequence[Event] = ()) -> None:
        """Serve the link until it closes (by either side, silence, or cancellation);
        `first` are frames that came with the peer's proof. The stream is closed after."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    # Named for debuggers and profiles (and the tests that count steps).
                    for what, task in (("writer", self._write_forever),
                                       ("heartbeat", self._beat_forever),
                                       ("request timer", self._expire_forever)):
                        nursery.start_soon(self._guarded, what, task,
                                           name=f"mesh link to {self.peer}: {what}")
                    await self._guarded("reader", partial(self._read_forever, first))
        finally:
            self._nursery = None
            if not self._closed:
                self.close("shutting down", bye=True)  # cancelled from outside
            if self._say_bye and not self._sending:  # never inside a half-sent frame
                await say_bye(self._stream, self._connection, self.close_reason)
            await trio.aclose_forcefully(self._stream)

    async def _guarded(self, what: str, task: Callable[[], Any]) -> None:
        """A bug of ours in one link's task ends that link alone, logged."""
        try:
            await task()
        except Exception:
            log.exception("mesh link to %s: the %s failed; closing the link", self.peer, what)
            self.close(f"internal error in the {what}", failure=True)

    async def _read_forever(self, first: Sequence[Event]) -> None:
        self._stats.frames_in += len(first)
        self._dispatch(first)
        if self._fd >= 0:
            await self._read_socket()
            return
        stream = self._stream
        while not self._closed:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.close(f"the connection broke: {exc or type(exc).__name__}")
                return
            if not self._receive(data):
                return

    async def _read_socket(self) -> None:
        """The reader of a plain TCP link: straight off the file descriptor. After a short
        read the socket is empty, so it waits before reading again (instead of a `recv`
        that fails with EAGAIN); after a full one it lets the other tasks run first."""
        fd = self._fd
        wait = False
        while not self._closed:
            try:
                if wait:
                    await trio.lowlevel.wait_readable(fd)
                data = os.read(fd, RECEIVE_SIZE)
            except BlockingIOError:
                wait = True
                continue
            except (OSError, trio.ClosedResourceError) as exc:
                self.close(f"the connection broke: {exc or type(exc).__name__}")
                return
            if not self._receive(data):
                return
            wait = len(data) < RECEIVE_SIZE
            if not wait:
                # A burst: let the tasks this read woke run, and the flusher write what
                # they queue, before reading on. Reading four 64 KiB in a row first made
                # batches bigger and the two sides take turns instead of overlapping
                # (1,024 requests in flight: ~60k/s against ~83k/s); it also keeps a
                # peer that fills the socket from starving the other tasks.
                await trio.lowlevel.checkpoint()

    def _receive(self, data: bytes | bytearray) -> bool:
        """Handle what one read brought; False once the link is closed."""
        if not data:
            self.close("the peer closed the connection")
            return False
        stats = self._stats
        self._received = True
        stats.bytes_in += len(data)
        try:
            events = self._connection.receive_data(data)
        except MeshProtocolError as error:
            log.warning("mesh link to %s: %s; closing the link", self.peer, error.reason)
            stats.frames_in += len(error.events)
            self._dispatch(error.events)  # the good frames before the bad one
            self.close(error.reason, failure=True, bye=True)
            return False
        stats.frames_in += len(events)
        self._dispatch(events)
        return not self._closed

    async def _write_forever(self) -> None:
        stream, stats = self._stream, self._stats
        while True:
            if not self._buffer:
                await self._writer.park()
                continue
            data, frames = self._buffer, self._queued
            self._buffer, self._queued = bytearray(), 0
            self._sending = True
            try:
                if len(data) <= SEND_CHUNK:
                    await stream.send_all(data)
                else:
                    with memoryview(data) as view:
                        for start in range(0, len(data), SEND_CHUNK):
                            await stream.send_all(view[start:start + SEND_CHUNK])
                            self._progressed = True
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.close(f"the connection broke: {exc or type(exc).__name__}")
                return
            self._sending = False
            self._progressed = True
            stats.frames_out += frames
            stats.bytes_out += len(data)

    async def _beat_forever(self) -> None:
        """PING every interval; a peer is down after `missed_heartbeats` intervals in a
        row with nothing received (or, while we write to it, nothing taken). Intervals
        are counted as ticks of this task, not as time: if our own loop stalls (a long
        synchronous call), the reader gets to run before the next tick, so the stall is
        not mistaken for the peer's silence."""
        interval = self._options.heartbeat_interval
        missed = self._options.missed_heartbeats
        silent = stalled = 0
        while True:
            await trio.sleep(interval)
            silent = 0 if self._received else silent + 1
            stalled = stalled + 1 if self._sending and not self._progressed else 0
            self._received = self._progressed = False
            if silent >= missed:
                log.warning("mesh link to %s: nothing received for %d heartbeats of %.2f s; "
                            "closing the link", self.peer, silent, interval)
                self.close(f"silent for {silent} heartbeats of {interval:g} s", failure=True)
                return
            if stalled >= missed:
                log.warning("mesh link to %s: the peer took no data for %d heartbeats of "
                            "%.2f s; closing the link", self.peer, stalled, interval)
                self.close(f"took no data for {stalled} heartbeats of {interval:g} s",
                           failure=True)
                return
            self._enqueue(self._connection.ping(), force=True)

    async def _expire_forever(self) -> None:
        deadlines, calls, stats = self._deadlines, self._calls, self._stats
        while True:
            self._timer = trio.CancelScope(deadline=deadlines[0][0] if deadlines else math.inf)
            with self._timer:
                await trio.sleep_forever()
            now = trio.current_time()
            while deadlines and deadlines[0][0] <= now:
                call = calls.pop(heapq.heappop(deadlines)[1], None)
                if call is not None:
                    stats.requests_failed += 1
                    stats.requests_timed_out += 1
                    call.error = PeerTimeout(
                        f"shard {self.peer} did not answer {call.method} within "
                        f"{call.deadline - call.started:g} s")
                    call.finish()
            # Entries of answered requests at the top would each wake this task (and
            # the process) for nothing, one per request a timeout after it: skip them,
            # and arm the timer on the earliest request still waiting.
            while deadlines and deadlines[0][1] not in calls:
                heapq.heappop(deadlines)

    # -- closing --------------------------------------------------------------------------

    def close(self, reason: str, *, failure: bool = False, bye: bool = False) -> None:
        """End the link now: its requests in flight fail, queued frames are dropped, its
        tasks are cancelled. `bye` tells the peer `reason` (best effort)."""
        if self._closed:
            return
        self._closed = True
        self._say_bye = bye
        self.close_reason = reason
        if failure:
            self._stats.link_failures += 1
        calls = list(self._calls.values())
        self._calls.clear()
        self._deadlines.clear()
        for call in calls:
            call.error = PeerUnavailable(f"shard {self.peer} is unreachable: its link closed "
                                         f"({reason}) with the request in flight")
            call.finish()
        self._stats.requests_failed += len(calls)
        self._buffer, self._queued = bytearray(), 0
        self._scope.cancel()
        if self._on_close is not None:
            self._on_close(self)

    # -- sending --------------------------------------------------------------------------

    def _full(self) -> bool:
        return (self._queued >= self._options.queue_frames
                or len(self._buffer) >= self._options.queue_bytes)

    def _enqueue(self, frame: bytes, *, force: bool = False) -> bool:
        if self._closed or (not force and self._full()):
            return False
        buffer = self._buffer
        was_empty = not buffer
        buffer += frame
        self._queued += 1
        if was_empty:
            if self._flusher is not None:
                self._flusher.add(self)  # written at the end of this scheduler pass
            else:
                self._writer.unpark()
        return True

    def flush(self) -> None:
        """The flusher's call, between two passes of the scheduler: write the queue with
        one non-blocking write. What the kernel does not take (or a broken socket) is
        left to the writer task, woken through the flusher; nothing here reschedules a
        task. Skipped while the writer holds part of the queue: it sends the rest."""
        buffer = self._buffer
        if self._closed or self._sending or not buffer:
            return
        try:
            # os.write on the descriptor: a Trio socket's send is async, and the stdlib
            # socket inside it is private. Trio made the descriptor non-blocking.
            sent = os.write(self._fd, buffer)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = -1  # the writer's send_all meets the error and closes the link
        stats = self._stats
        if sent == len(buffer):
            stats.frames_out += self._queued
            stats.bytes_out += sent
            self._buffer, self._queued = bytearray(), 0
            self._progressed = True
            return
        if sent > 0:
            del buffer[:sent]  # a bytearray drops its head without copying the rest
            stats.bytes_out += sent
            self._progressed = True
        # A frame may be half out: from here the writer owns the queue (a BYE must not
        # follow half a frame, and the heartbeat watches for progress).
        self._sending = True
        assert self._flusher is not None
        self._flusher.soon(self._wake_writer)

    def _wake_writer(self) -> None:
        self._writer.unpark()

    # The timeout is a parameter, not the caller's cancel scope: it travels to the peer
    # as the request's deadline_ms, so the peer can stop work nobody waits for.
    async def request(self, method: str, body: Any, timeout: float) -> Any:  # noqa: ASYNC109
        call_id, call = self._send_request(method, body, timeout, None)
        calls = self._calls

        def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
            calls.pop(call_id, None)  # the caller gave up: a late answer is dropped
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if call.error is not None:
            raise call.error
        return call.result

    def start_request(self, method: str, body: Any, timeout: float) -> Pending[Any]:
        """`request` without a task: the frame is queued now (so requests started one
        after another reach the peer in that order), and the `Pending` finishes with the
        answer or the error."""
        pending: Pending[Any] = Pending()
        try:
            self._send_request(method, body, timeout, pending)
        except ChatdError as exc:
            pending.set_error(exc)
        return pending

    def _send_request(self, method: str, body: Any, timeout: float,
                      pending: Pending[Any] | None) -> tuple[int, _Call]:
        stats = self._stats
        stats.requests_sent += 1
        if self._ending() or self._full():
            stats.requests_failed += 1
            why = (f"its link closed ({self.close_reason or 'the peer said bye'})"
                   if self._ending() else
                   f"{self._queued} frames ({len(self._buffer)} bytes) wait to be sent to it")
            raise PeerUnavailable(f"shard {self.peer} is unreachable: {why}")
        call_id = next(self._ids)
        try:
            frame = self._connection.request(call_id, method, body, max(0, int(timeout * 1000)))
        except FrameTooLarge as exc:
            stats.requests_failed += 1
            raise PayloadTooLarge(f"{method} to shard {self.peer}: {exc}") from None
        except BaseException:
            stats.requests_failed += 1
            raise
        now = trio.current_time()
        call = _Call(method, now, now + timeout, pending)
        calls = self._calls
        calls[call_id] = call
        self._enqueue(frame)
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(calls) + 1024:  # mostly answered ones: compact
            deadlines[:] = [(other.deadline, other_id) for other_id, other in calls.items()]
            heapq.heapify(deadlines)
        else:
            heapq.heappush(deadlines, (call.deadline, call_id))
        if call.deadline < self._timer.deadline:
            self._timer.deadline = call.deadline
        return call_id, call

    def _ending(self) -> bool:
        """Closed, or closing: a BYE went either way and the link task has not yet seen
        it (a peer-up callback may run just then); nothing more can go out."""
        return self._closed or self._connection.state is not State.OPEN

    def post(self, method: str, body: Any) -> bool:
        stats = self._stats
        if self._ending() or self._full():
            stats.posts_dropped += 1
            return False
        try:
            frame = self._connection.post(method, body)
        except FrameTooLarge as exc:
            log.warning("mesh post %s to %s dropped: %s", method, self.peer, exc)
            stats.posts_dropped += 1
            return False
        self._enqueue(frame)
        stats.posts_sent += 1
        return True

    # -- receiving ------------------------------------------------------------------------

    def _dispatch(self, events: Sequence[Event]) -> None:
        for event in events:
            kind = type(event)
            if kind is Request:
                self._on_request(event)  # type: ignore[arg-type]
            elif kind is Response:
                self._on_response(event)  # type: ignore[arg-type]
            elif kind is Post:
                self._on_post(event)  # type: ignore[arg-type]
            elif kind is Ping:
                if self._can_send():
                    self._enqueue(self._connection.pong(), force=True)
            elif isinstance(event, Bye):
                log.info("mesh link to %s: the peer closes it: %r", self.peer, event.reason)
                self.close(f"the peer said bye: {event.reason!r}")
                return
            # Pong: arriving was its purpose (any frame counts as a sign of life).

    def _on_response(self, event: Response) -> None:
        call = self._calls.pop(event.id, None)
        stats = self._stats
        if call is None:
            stats.late_responses += 1
            return
        stats.observe_latency(trio.current_time() - call.started)
        if event.ok:
            call.result = event.body
        else:
            assert event.error is not None
            stats.remote_errors += 1
            call.error = remote_error(event.error)
        call.finish()

    def _on_post(self, event: Post) -> None:
        self._stats.posts_received += 1
        try:
            self._handler.handle_post(self.peer, event.method, event.body)
        except Exception:
            log.exception("mesh post %s from %s failed", event.method, self.peer)

    def _on_request(self, event: Request) -> None:
        self._stats.requests_received += 1
        if self._inbound >= self._options.max_inbound_requests:
            self._send_error(event.id, 503, "peer_busy",
                             f"shard {self.shard} is still working on {self._inbound} "
                             f"requests from {self.peer}; retry later")
            return
        try:
            result = self._handler.handle_request(self.peer, event.method, event.body)
        except Exception as exc:
            self._answer_error(event.id, event.method, exc)
            return
        if hasattr(result, "add_done_callback"):
            self._inbound += 1
            result.add_done_callback(partial(self._completed, event.id, event.method))
        elif inspect.isawaitable(result):
            assert self._nursery is not None
            self._inbound += 1
            self._nursery.start_soon(self._await_answer, event.id, event.method, result,
                                     event.deadline_ms / 1000)
        else:
            self._answer(event.id, event.method, result)

    def _completed(self, call_id: int, method: str, completion: Completion) -> None:
        self._inbound -= 1
        if completion.error is not None:
            self._answer_error(call_id, method, completion.error)
        else:
            self._answer(call_id, method, completion.result)

    async def _await_answer(self, call_id: int, method: str, awaitable: Any,
                            deadline: float) -> None:
        try:
            # Past the deadline the peer has given up: stop the work, send nothing.
            with trio.move_on_after(deadline):
                result = await awaitable
                self._answer(call_id, method, result)
        except Exception as exc:
            self._answer_error(call_id, method, exc)
        finally:
            self._inbound -= 1

    def _can_send(self) -> bool:
        """Whether frames may still go out: the link is not closed, and the connection
        is still open (a BYE read in the same chunk as a PING or a request closes the
        connection before those are handled; they are then left unanswered)."""
        return not self._closed and self._connection.state is State.OPEN

    def _answer(self, call_id: int, method: str, result: Any) -> None:
        if not self._can_send():
            return
        try:
            frame = self._connection.response(call_id, result)
        except FrameTooLarge as exc:
            log.error("mesh request %s from %s: the answer is too large: %s", method,
                      self.peer, exc)
            self._send_error(call_id, 500, "internal", f"the answer to {method} is too large")
            return
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("mesh request %s from %s: the answer cannot be encoded: %s", method,
                      self.peer, exc)
            self._send_error(call_id, 500, "internal",
                             f"the answer to {method} cannot be encoded")
            return
        self._enqueue(frame, force=True)

    def _answer_error(self, call_id: int, method: str, error: BaseException) -> None:
        error = _single(error)
        if isinstance(error, ChatdError):
            retry_after = getattr(error, "retry_after", None)
            self._send_error(call_id, error.status, error.code, error.message,
                             retry_after if isinstance(retry_after, int | float) else None)
            return
        log.error("mesh request %s from %s failed", method, self.peer, exc_info=error)
        self._send_error(call_id, 500, "internal", f"internal error in {method}")

    def _send_error(self, call_id: int, status: int, code: str, message: str,
                    retry_after: float | None = None) -> None:
        if self._can_send():
            self._enqueue(self._connection.error(call_id, status, code, message, retry_after),
                          force=True)


def _single(error: BaseException) -> BaseException:
    """The one error inside nested one-error groups (a task's nursery wraps what it
    raises), so a ChatdError raised in a handler's nursery keeps its status."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
