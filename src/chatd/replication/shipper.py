"""The owner's side: ship every committed batch to the range's replica, and copy ranges.

`Shipper` is the group committer's `CommitGate`. For each range this shard owns with a
replica it keeps an outbound stream, in one of three modes:

    streaming   each batch's records of the range go out as `replica.apply`, numbered;
                the batch's commands are acknowledged when the replica has them
    copying     a copy is under way (`copy`): batches written meanwhile are queued and
                sent once the copy has ended
    blocked     the last shipment failed (replica down, refused, deadline): nothing is
                sent until the coordinator starts a copy, to the same replica or a new
                one under a new epoch

Commands of a range that is not streaming wait for it to stream again, up to the
request deadline; then they are refused (503 not_acknowledged) and their after-commit
callbacks (publishing the messages) are held until the range streams again, so that no
client sees an entry its replica might not have. Everything written here before a copy
began is in the copy; everything after is shipped after it: so once a copy has ended
and the queue is drained, the replica holds every record the owner has.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from chatd.pending import Pending
from chatd.replication import protocol
from chatd.replication.placement import Placement, RangeState
from chatd.replication.range_records import RangeRecords
from chatd.services.routing import Peers
from chatd.storage import Batch
from chatd.storage.group_commit import run_callbacks
from chatd.storage.store import Operation

log = logging.getLogger(__name__)


class Mode(enum.Enum):
    STREAMING = "streaming"
    COPYING = "copying"
    BLOCKED = "blocked"


@dataclass(slots=True)
class _Outbound:
    state: RangeState
    mode: Mode = Mode.BLOCKED
    next_batch: int = 0
    #: Bumped whenever the stream breaks: an answer to a shipment sent before counts
    #: for nothing (a later batch must not be acknowledged ahead of an earlier one).
    generation: int = 0
    in_flight: int = 0
    #: Set when the last unanswered shipment is answered (a copy waits for it).
    idle: trio.Event | None = None
    #: Ops of batches written while copying, sent once the copy has ended.
    queued: list[list[Operation]] = field(default_factory=list)
    #: After-commit callbacks of refused commands, run when the range streams again.
    held: list[Callable[[], None]] = field(default_factory=list)
    #: Batches waiting for the range to stream again: (deadline, pending).
    waiting: list[tuple[float, Pending[bool]]] = field(default_factory=list)
    copies: int = 0
    #: The epoch of the last copy that completed (0: none yet).
    copied_epoch: int = 0
    shipped_batches: int = 0
    #: When the oldest unanswered shipment was sent (for the lag gauge), or None.
    oldest_sent: float | None = None


class Replicated(Exception):
    """A copy step was refused or failed (the coordinator retries or gives up)."""


class Shipper:
    def __init__(self, *, shard: str, placement: Placement, ranges: RangeRecords,
                 request_timeout: float, lease_held: Callable[[], bool],
                 on_refused: Callable[[RangeState], None],
                 on_blocked: Callable[[str], None]) -> None:
        """`lease_held()`: whether this shard may acknowledge now (its etcd lease; always
        true without etcd). `on_refused(state)`: a replica knows a newer state of a range
        (this shard lost it). `on_blocked(range)`: a stream broke; recover it."""
        self._shard = shard
        self._placement = placement
        self._ranges = ranges
        self._timeout = request_timeout
        self._lease_held = lease_held
        self._on_refused = on_refused
        self._on_blocked = on_blocked
        self.peers: Peers | None = None
        self._out: dict[str, _Outbound] = {}
        self._closing = False
        self._someone_waits = trio.Event()

    # -- CommitGate ---------------------------------------------------------------------------

    def range_of(self, conversation_id: int) -> str | None:
        range_ = self._ranges.range_of(conversation_id)
        state = self._placement.state(range_)
        return range_ if state.replica is not None or state.owner != self._shard else None

    def ship(self, batch: Batch, ranges: set[str]) -> Pending[frozenset[str]] | None:
        owned = {state.range for state in self._placement.states()
                 if state.owner == self._shard and state.replica is not None}
        parts = self._ranges.partition(batch.operations, owned) if owned else {}
        needed = ranges | set(parts)
        if not needed:
            return None
        failed: set[str] = set()
        waits: list[tuple[str, Pending[bool]]] = []
        for range_ in needed:
            state = self._placement.state(range_)
            if state.owner != self._shard:
                failed.add(range_)  # moved away while the command was queued
                continue
            if state.replica is None:
                if not self._lease_held():
                    failed.add(range_)  # acknowledged alone: only under the lease
                continue
            out = self._outbound(state)
            ops = parts.get(range_, [])
            if out.mode is Mode.STREAMING:
                if ops:
                    waits.append((range_, self._send_apply(out, ops)))
                continue
            if out.mode is Mode.COPYING and ops:
                out.queued.append(ops)
            waits.append((range_, self._wait_for_stream(out)))
        if not waits and not failed:
            return None
        return self._combine(waits, failed)

    def hold(self, range_: str, callbacks: list[Callable[[], None]]) -> None:
        out = self._out.get(range_)
        state = self._placement.state(range_)
        if state.owner != self._shard:
            return  # the range is another shard's now; what ran ahead here is dropped
        if out is not None and out.mode is not Mode.STREAMING:
            out.held.extend(callbacks)
            return
        # The records are on the replica (refused for the lease, not for replication):
        # publishing them cannot show a client anything a new owner would not have.
        run_callbacks(callbacks)

    # -- the coordinator's side ---------------------------------------------------------------

    def blocked(self) -> list[RangeState]:
        """Ranges this shard owns with a replica whose stream is not running."""
        found = []
        for state in self._placement.states():
            if state.owner == self._shard and state.replica is not None:
                out = self._outbound(state)
                if out.mode is Mode.BLOCKED:
                    found.append(state)
        return found

    def placement_changed(self, state: RangeState) -> None:
        """A range's state changed: a stream to an old replica or epoch is over."""
        out = self._out.get(state.range)
        if out is None:
            return
        if state.owner != self._shard or state.replica is None:
            del self._out[state.range]
            self._break(out)
            if state.owner == self._shard:
                # Acknowledging alone now (no replica is up): what was held is safe.
                run_callbacks(out.held)
            out.held.clear()
            self._release_waiting(out, ok=state.owner == self._shard)
        elif (out.state.epoch, out.state.replica) != (state.epoch, state.replica):
            out.state = state
            self._break(out)

    async def copy(self, state: RangeState) -> None:
        """Copy the range to `state.replica` at `state.epoch`, then stream. Raises
        `Replicated` if any step is refused or fails."""
        out = self._outbound(state)
        self._break(out)
        out.mode = Mode.COPYING
        out.queued.clear()
        out.copies += 1
        # Shipments still unanswered belong to the broken stream: let them fail first,
        # so that none of their callbacks is held after the copy has ended.
        if out.in_flight:
            out.idle = trio.Event()
            with trio.move_on_after(self._timeout + 1):
                await out.idle.wait()
        try:
            await self._ask(state, protocol.BEGIN, {"owner": self._shard})
            for chunk in self._ranges.chunks(state.range, max_bytes=protocol.CHUNK_BYTES):
                self._check_current(state)
                await self._ask(state, protocol.CHUNK, {"ops": protocol.wire_ops(chunk)})
            self._check_current(state)
            await self._ask(state, protocol.END, {"next_batch": out.next_batch})
            while out.queued:
                self._check_current(state)
                queued, out.queued = out.queued, []
                for ops in queued:
                    for part in _split(ops, protocol.CHUNK_BYTES):
                        await self._ask(state, protocol.APPLY, {
                            "batch": out.next_batch, "ops": protocol.wire_ops(part)})
                        out.next_batch += 1
            self._check_current(state)
        except BaseException:
            if out.mode is Mode.COPYING:
                out.mode = Mode.BLOCKED
            raise
        # From here on nothing awaits: no batch can slip between the drain and streaming.
        out.mode = Mode.STREAMING
        out.copied_epoch = state.epoch
        held, out.held = out.held, []
        run_callbacks(held)
        self._release_waiting(out, ok=True)
        log.info("range %s: replica %s holds it (epoch %d); streaming", state.range,
                 state.replica, state.epoch)

    def ready(self, range_: str) -> bool:
        """Whether this shard may serve the range it owns: it has no replica, or a copy
        to a replica has completed since this process began owning it. Until then its
        conversations would be read from disk, which may hold entries nobody
        acknowledged (written before a crash), and a read must not show them, nor a send
        number past them, before a replica holds them too. (After a replica move the
        state in memory stops at what was acknowledged, so reads go on meanwhile.)"""
        state = self._placement.state(range_)
        if state.replica is None:
            return True
        out = self._out.get(range_)
        return out is not None and out.copied_epoch > 0

    def caught_up(self, range_: str) -> bool:
        """Whether the range streams to its replica with nothing unanswered: the replica
        holds everything written here."""
        out = self._out.get(range_)
        return out is not None and out.mode is Mode.STREAMING and not out.in_flight

    def streams(self) -> list[dict[str, Any]]:
        """Each outbound stream, for /admin/ranges and /metrics."""
        now = trio.current_time()
        return [{"range": name, "replica": out.state.replica, "epoch": out.state.epoch,
                 "mode": out.mode.value, "next_batch": out.next_batch,
                 "copies": out.copies, "shipped_batches": out.shipped_batches,
                 "lag_seconds": 0.0 if out.oldest_sent is None else now - out.oldest_sent}
                for name, out in sorted(self._out.items())]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Refuse batches that waited past the deadline for a range to stream again.
        Returns after `close()` once no batch waits."""
        task_status.started()
        while not (self._closing and not any(out.waiting for out in self._out.values())):
            if not any(out.waiting for out in self._out.values()):
                # Nothing to time out: sleep until a batch waits (no wake-ups when idle,
                # nor ever on a shard without replication).
                self._someone_waits = trio.Event()
                with trio.move_on_after(1.0):  # and look at _closing now and then
                    await self._someone_waits.wait()
                continue
            await trio.sleep(0.05)
            now = trio.current_time()
            for out in list(self._out.values()):
                expired = [pending for deadline, pending in out.waiting if deadline <= now]
                if expired:
                    out.waiting = [(deadline, pending) for deadline, pending in out.waiting
                                   if deadline > now]
                    for pending in expired:
                        pending.set_result(False)

    def close(self) -> None:
        self._closing = True

    # -- internals ----------------------------------------------------------------------------

    def _outbound(self, state: RangeState) -> _Outbound:
        out = self._out.get(state.range)
        if out is None:
            out = self._out[state.range] = _Outbound(state)
        elif (out.state.epoch, out.state.replica) != (state.epoch, state.replica):
            out.state = state
            self._break(out)
        return out

    def _break(self, out: _Outbound) -> None:
        out.generation += 1
        out.oldest_sent = None
        if out.mode is Mode.STREAMING:
            out.mode = Mode.BLOCKED
            self._on_blocked(out.state.range)

    def _send_apply(self, out: _Outbound, ops: list[Operation]) -> Pending[bool]:
        """Ship a batch's share of the range; true once the replica holds all of it. A
        share too big for one mesh frame goes as several numbered applies."""
        parts = _split(ops, protocol.CHUNK_BYTES)
        if len(parts) == 1:
            return self._send_one_apply(out, ops)
        sent = [self._send_one_apply(out, part) for part in parts]
        combined: Pending[bool] = Pending()
        remaining = len(sent)

        def one_done(done: Pending[bool]) -> None:
            nonlocal remaining
            remaining -= 1
            if not done.result and not combined.finished:
                combined.set_result(False)
            elif remaining == 0 and not combined.finished:
                combined.set_result(True)

        for pending in sent:
            pending.add_done_callback(one_done)
        return combined

    def _send_one_apply(self, out: _Outbound, ops: list[Operation]) -> Pending[bool]:
        assert self.peers is not None and out.state.replica is not None
        body = {"range": out.state.range, "epoch": out.state.epoch, "batch": out.next_batch,
                "ops": protocol.wire_ops(ops)}
        out.next_batch += 1
        out.shipped_batches += 1
        out.in_flight += 1
        if out.oldest_sent is None:
            out.oldest_sent = trio.current_time()
        generation = out.generation
        call = self.peers.start_request(out.state.replica, protocol.APPLY, body,
                                        timeout=self._timeout)
        answer: Pending[bool] = Pending()

        def answered(done: Pending[Any]) -> None:
            out.in_flight -= 1
            if out.in_flight == 0:
                out.oldest_sent = None
                if out.idle is not None:
                    out.idle.set()
            ok = done.error is None and self._accepted(out.state, done.result)
            if not ok and done.error is not None:
                log.warning("range %s: replica %s did not take batch %d: %s",
                            out.state.range, out.state.replica, body["batch"], done.error)
            if ok and generation != out.generation:
                ok = False  # the stream broke after it was sent: acknowledged later
            if not ok and generation == out.generation:
                self._break(out)
            answer.set_result(ok)

        call.add_done_callback(answered)
        return answer

    def _wait_for_stream(self, out: _Outbound) -> Pending[bool]:
        pending: Pending[bool] = Pending()
        out.waiting.append((trio.current_time() + self._timeout, pending))
        self._someone_waits.set()
        return pending

    def _release_waiting(self, out: _Outbound, *, ok: bool) -> None:
        waiting, out.waiting = out.waiting, []
        for _, pending in waiting:
            pending.set_result(ok)

    def _combine(self, waits: list[tuple[str, Pending[bool]]], failed: set[str]
                 ) -> Pending[frozenset[str]]:
        combined: Pending[frozenset[str]] = Pending()
        remaining = len(waits)
        if not remaining:
            combined.set_result(frozenset(failed))
            return combined

        def one_done(range_: str, done: Pending[bool]) -> None:
            nonlocal remaining
            if not done.result:
                failed.add(range_)
            remaining -= 1
            if remaining == 0:
                if not self._lease_held():
                    failed.update(name for name, _ in waits)
                combined.set_result(frozenset(failed))

        for range_, pending in waits:
            pending.add_done_callback(partial(one_done, range_))
        return combined

    async def _ask(self, state: RangeState, method: str, body: dict[str, Any]) -> None:
        assert self.peers is not None and state.replica is not None
        if not self.peers.is_up(state.replica):
            raise Replicated(f"replica {state.replica} is not reachable")
        answer = await self.peers.start_request(
            state.replica, method, {"range": state.range, "epoch": state.epoch, **body},
            timeout=self._timeout * 5).wait()
        if not self._accepted(state, answer):
            raise Replicated(f"replica {state.replica} refused {method}: {answer!r}")

    def _accepted(self, state: RangeState, answer: Any) -> bool:
        if isinstance(answer, dict) and answer.get("ok") is True:
            return True
        if isinstance(answer, dict) and answer.get("refused") == "stale_epoch":
            try:
                known = RangeState.from_wire(answer.get("state"))
            except ValueError:
                return False
            if known.epoch > state.epoch or known.owner != self._shard:
                self._on_refused(known)
        return False

    def _check_current(self, state: RangeState) -> None:
        current = self._placement.state(state.range)
        if current != state:
            raise Replicated(f"range {state.range} changed to epoch {current.epoch} "
                             "during the copy")


def _split(ops: list[Operation], max_bytes: int) -> list[list[Operation]]:
    """`ops` in consecutive runs of about `max_bytes` each (at least one op per run)."""
    parts: list[list[Operation]] = [[]]
    size = 0
    for op in ops:
        op_size = len(op[1]) + len(op[2] or b"") + 16
        if parts[-1] and size + op_size > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append(op)
        size += op_size
    return parts
