"""Group commit: many commands, one synced WriteBatch, everyone acknowledged after it lands.

Commands are plain functions `apply(batch) -> result` run one after another by the single
committer task, in submission order. Because they run without awaiting, each sees the
effects of every command before it (the in-memory state the services keep), which is how
the owner of a conversation hands out dense seqs. Then the batch is written once; only
after the write returns are waiters woken and `after_commit` callbacks run. If the write
fails, no command in the batch is acknowledged and the listeners registered with
`on_reload_needed` drop the in-memory state that ran ahead of the disk.

One command never fails another: a command refused by a rule is rolled out of the batch;
one that fails unexpectedly (or carries a value that cannot be stored) is refused alone,
the batch is cut short before the commands after it, and state is reloaded from disk once
the commands before it have landed.

rocksdict holds the GIL for the whole write, so a thread would not overlap it with other
work; the write runs on the event loop and batching is what keeps its cost per command low.

With replication (chatd/replication) a batch is not done when it is durable here: a
`CommitGate` ships its records to the replicas and says when they hold them too. The
committer goes on writing the next batches meanwhile (pipelining), and finishes batches
strictly in the order they were written, so acknowledgements keep log order. A command
whose range could not be replicated is refused (503) although it is on this disk; its
after-commit callbacks (publishing the message) are handed back to the gate, which runs
them if the range recovers here, or drops them if another shard took the range over.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio

from chatd.errors import ChatdError
from chatd.pending import Pending
from chatd.storage.errors import (
    CommandFailed,
    NotReplicated,
    Overloaded,
    ShuttingDown,
    StorageError,
    UnstorableValue,
    WriteFailed,
)
from chatd.storage.store import Batch, Store

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CommitStatistics:
    batches_written: int
    commands_committed: int
    commands_refused: int
    failed_writes: int
    largest_batch: int
    pending: int

    @property
    def mean_batch(self) -> float:
        return self.commands_committed / self.batches_written if self.batches_written else 0.0


class Command(Pending[T]):
    """A queued command; `await command.wait()` returns its result once durable."""

    __slots__ = ("apply", "conversation_id", "durable")

    def __init__(self, apply: Callable[[Batch], T], durable: bool = True,
                 conversation_id: int | None = None) -> None:
        super().__init__()
        self.apply = apply
        #: False for writes that may be lost in a crash (hints): they never make a batch
        #: wait for an fsync; a batch syncs when any of its commands is durable.
        self.durable = durable
        #: The conversation an owner command acts on: its answer waits for that range's
        #: replica (even an answer that wrote nothing, a resend answered from the dedup
        #: row, must not get ahead of the original's replication).
        self.conversation_id = conversation_id


class CommitGate(Protocol):
    """Replication's hold on acknowledgements (chatd.replication.shipper.Shipper)."""

    def range_of(self, conversation_id: int) -> str | None:
        """The replicated range a command on this conversation waits for, if any."""
        ...

    def ship(self, batch: Batch, ranges: set[str]) -> Pending[frozenset[str]] | None:
        """The batch is durable here: replicate it. None when there is nothing to wait
        for; else a Pending of the ranges whose replication failed. `ranges` are those
        the batch's commands wait for, beyond what its writes touch."""
        ...

    def hold(self, range_: str, callbacks: list[Callable[[], None]]) -> None:
        """Keep the after-commit callbacks of refused commands until `range_` recovers."""
        ...


@dataclass(slots=True)
class _Written:
    """A batch durable here, waiting for its replicas before it is finished."""

    batch: Batch
    taken: list[Command[Any]]
    #: Per command: its range (None: waits for none) and its span of after_commit.
    ranges: list[str | None]
    spans: list[tuple[int, int]]
    shipped: Pending[frozenset[str]]
    doubtful: bool


class GroupCommitter:
    def __init__(self, store: Store, *, max_batch: int = 1024, max_pending: int = 65_536) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: deque[Command[Any]] = deque()
        # Bounds memory when producers outrun the disk: submit() waits for room.
        self._room = trio.Semaphore(max_pending)
        self._max_pending = max_pending
        self._work = trio.Event()
        self._closing = False
        self._reload_listeners: list[Callable[[], None]] = []
        self._batch_listeners: list[Callable[[], None]] = []
        self._riders: list[Callable[[Batch], None]] = []
        self._gate: CommitGate | None = None
        self._awaiting: deque[_Written] = deque()
        #: Some written batch's replication was answered since the last look: the
        #: waiting batches are scanned then, not on every batch written.
        self._shipped = False
        self._batches = 0
        self._committed = 0
        self._refused = 0
        self._failed_writes = 0
        self._largest = 0

    def on_reload_needed(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever in-memory state may differ from the disk: a batch
        failed to write (its commands are refused), or a command failed halfway (refused
        alone, after the rest of its batch landed). Listeners drop what they hold in
        memory, to be read again from disk."""
        self._reload_listeners.append(listener)

    def ride_along(self, source: Callable[[Batch], None]) -> None:
        """Call `source(batch)` at the start of every batch: writes that need no batch of
        their own (delivery hints) join whatever batch comes next."""
        self._riders.append(source)

    def set_gate(self, gate: CommitGate) -> None:
        """Hold each batch's acknowledgements until `gate` says its replicas have it."""
        self._gate = gate

    def after_each_batch(self, listener: Callable[[], None]) -> None:
        """Call `listener` once a batch's waiters and callbacks have all been told (the
        WebSocket layer writes every delivery of the batch then, in the same step)."""
        self._batch_listeners.append(listener)

    def statistics(self) -> CommitStatistics:
        return CommitStatistics(self._batches, self._committed, self._refused,
                                self._failed_writes, self._largest, len(self._queue))

    async def submit(self, apply: Callable[[Batch], T], *,
                     conversation_id: int | None = None) -> T:
        """Run `apply` in the next batch and return its result once the batch is durable.

        If the caller is cancelled while waiting, the command still commits (or not) with
        its batch: a client that retries with the same client_msg_id gets the same answer.
        """
        self._check_open()
        async with self._room:
            pending = Command(apply, conversation_id=conversation_id)
            self._queue.append(pending)
            self._work.set()
            # Shielded so that the semaphore slot is returned only once the committer
            # is done with this command, whatever happens to the caller.
            with trio.CancelScope(shield=True):
                await pending.wait_finished()
        return await pending.wait()

    def enqueue(self, apply: Callable[[Batch], T], *, durable: bool = True,
                conversation_id: int | None = None) -> Command[T]:
        """Queue `apply` now, without waiting for room: commands enqueued one after another
        run in that order (a WebSocket's pipelined sends keep their order this way).
        Refuses when the queue is full, instead of growing without bound. A command that
        is not `durable` is written without an fsync unless it shares a batch with one
        that is."""
        self._check_open()
        if len(self._queue) >= self._max_pending:
            raise Overloaded("the commit queue is full")
        pending = Command(apply, durable, conversation_id)
        self._queue.append(pending)
        self._work.set()
        return pending

    def _check_open(self) -> None:
        if self._closing:
            raise ShuttingDown("the committer is closed")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The committer task. Returns after `close()` once every queued command is done."""
        task_status.started()
        try:
            await self._run()
        finally:
            self._fail_unfinished()

    async def _run(self) -> None:
        while True:
            # (Batches wait for replicas at most the request deadline: a shipment is
            # answered or failed by then.)
            finished = self._finish_replicated()
            if not self._queue:
                if finished:
                    self._tell_batch_listeners()
                if self._closing and not self._queue and not self._awaiting:
                    return
                await self._work.wait()
                self._work = trio.Event()
                continue
            if self._awaiting and self._awaiting[-1].doubtful:
                # State is reloaded from disk once that batch is finished; nothing may
                # run on it before.
                await self._work.wait()
                self._work = trio.Event()
                continue
            self._commit_one_batch()
            self._finish_replicated()
            self._tell_batch_listeners()
            # Let producers woken by this batch queue their next commands.
            await trio.lowlevel.checkpoint()

    def _fail_unfinished(self) -> None:
        """After `run` ended. A graceful end (`close()`) leaves nothing; a cancelled one
        (the shard's task tree torn down without closing) would leave the waiters of
        queued and unreplicated commands waiting for ever, some of them shielded (a
        cleanup that must land if it can): they are told now that it will not."""
        self._closing = True
        unfinished = list(self._queue)
        self._queue.clear()
        for written in self._awaiting:
            unfinished.extend(written.taken)
        self._awaiting.clear()
        for pending in unfinished:
            if not pending.finished:
                pending.set_error(ShuttingDown("the committer stopped"))

    def _tell_batch_listeners(self) -> None:
        for listener in self._batch_listeners:
            try:
                listener()
            except Exception:
                log.exception("an after-batch listener failed")

    def close(self) -> None:
        """Stop taking commands; `run` drains what is queued, then returns."""
        self._closing = True
        self._work.set()

    def _commit_one_batch(self) -> None:
        batch = Batch()
        for source in self._riders:
            try:
                source(batch)
            except Exception:
                log.exception("a ride-along source failed; its writes wait for the next batch")
                batch = Batch()
        taken: list[Command[Any]] = []
        # Set when a command failed in a way that may have left in-memory state half
        # changed (a bug, or a value that could not be encoded after state moved).
        doubtful = False
        spans: list[tuple[int, int]] = []
        while self._queue and len(taken) < self._max_batch:
            pending = self._queue.popleft()
            taken.append(pending)
            batch.durable = batch.durable or pending.durable
            mark = batch.mark()
            spans.append((mark[1], mark[1]))
            try:
                pending.result = pending.apply(batch)
            except UnstorableValue as exc:
                batch.rollback_to(mark)
                pending.error = exc
                doubtful = True
            except ChatdError as exc:
                # Refused by a rule: commands check before they change anything, so only
                # its buffered writes need taking back.
                batch.rollback_to(mark)
                pending.error = exc
            except Exception:
                log.exception("a command failed while building a batch; refusing it alone")
                batch.rollback_to(mark)
                pending.error = CommandFailed("the command failed; it was not applied")
                doubtful = True
            spans[-1] = (mark[1], len(batch.after_commit))
            if doubtful:
                # The commands before it ran on sound state and land; it is refused alone;
                # the ones after it wait for the next batch, after the reload below, so
                # none of them sees what it half did.
                break
        accepted = [p for p in taken if p.error is None]
        try:
            self._store.write(batch)
        except Exception:
            log.exception("batch write failed; %d commands not acknowledged", len(accepted))
            self._failed_writes += 1
            self._refuse_all(taken, WriteFailed("the write could not be made durable"))
            return
        if accepted:
            self._batches += 1
            self._committed += len(accepted)
            self._largest = max(self._largest, len(accepted))
        self._refused += len(taken) - len(accepted)
        gate = self._gate
        if gate is None:
            self._finish(batch, taken, doubtful)
            return
        ranges = [gate.range_of(p.conversation_id) if p.conversation_id is not None
                  and p.error is None else None for p in taken]
        shipped = gate.ship(batch, {name for name in ranges if name is not None})
        if shipped is None and not self._awaiting:
            self._finish(batch, taken, doubtful)
            return
        # Only a range's own commands wait for its replica, and for the range's earlier
        # batches (log order). The others (accounts, records applied as a replica) are
        # done now: making them wait could deadlock two shards that replicate each other.
        waiting = [index for index, range_ in enumerate(ranges) if range_ is not None]
        in_spans = {index for command, (start, end) in enumerate(spans)
                    if ranges[command] is not None for index in range(start, end)}
        run_callbacks([callback for index, callback in enumerate(batch.after_commit)
              if index not in in_spans])
        for index, pending in enumerate(taken):
            if ranges[index] is None:
                pending.finish()
        if not waiting:
            if doubtful and self._awaiting:
                # Reloading now would read back, as if acknowledged, what earlier batches
                # wrote while they wait for their replicas: reload once they are done.
                self._awaiting.append(_Written(Batch(), [], [], [], Pending.done(frozenset()),
                                               doubtful=True))
                self._shipped = True
            elif doubtful:
                self._reload_state()
            return
        later = Batch()
        later.after_commit = [callback for index, callback in enumerate(batch.after_commit)
                              if index in in_spans]
        kept_spans: list[tuple[int, int]] = []
        position = 0
        for index in waiting:
            start, end = spans[index]
            kept_spans.append((position, position + end - start))
            position += end - start
        written = _Written(later, [taken[index] for index in waiting],
                           [ranges[index] for index in waiting], kept_spans,
                           shipped or Pending.done(frozenset()), doubtful)
        self._awaiting.append(written)
        written.shipped.add_done_callback(self._answered)

    def _answered(self, _shipped: Pending[frozenset[str]]) -> None:
        self._shipped = True
        self._work.set()

    def _finish_replicated(self) -> bool:
        """Finish the written batches whose replication is settled: each range's in the
        order they were written (acknowledgements keep log order), independently of
        other ranges (a blocked range holds up only itself). A batch that left state in
        doubt waits for every batch before it (state is reloaded when it finishes).
        Whether any was finished."""
        if not self._shipped:
            return False  # nothing was answered since the last look
        self._shipped = False
        finished = False
        waiting: set[str] = set()
        # Set once a batch stays behind that left state in doubt: none after it finishes.
        doubt_behind = False
        kept: deque[_Written] = deque()
        for written in self._awaiting:
            ranges = {name for name in written.ranges if name is not None}
            ready = written.shipped.finished and not ranges & waiting and not doubt_behind \
                and not (written.doubtful and kept)
            if not ready:
                kept.append(written)
                waiting |= ranges
                doubt_behind = doubt_behind or written.doubtful
                continue
            failed = written.shipped.result if written.shipped.error is None else None
            if failed is None:  # the gate itself failed: treat every range as failed
                log.error("replication failed: %r", written.shipped.error)
                failed = frozenset(ranges)
            self._finish(written.batch, written.taken, written.doubtful,
                         failed=failed, ranges=written.ranges, spans=written.spans)
            finished = True
        self._awaiting = kept
        return finished

    def _finish(self, batch: Batch, taken: list[Command[Any]], doubtful: bool, *,
                failed: frozenset[str] = frozenset(), ranges: list[str | None] | None = None,
                spans: list[tuple[int, int]] | None = None) -> None:
        callbacks = batch.after_commit
        if failed:
            assert ranges is not None and spans is not None and self._gate is not None
            held: dict[str, list[Callable[[], None]]] = {}
            dropped: set[int] = set()
            for pending, range_, (start, end) in zip(taken, ranges, spans, strict=True):
                if range_ in failed:
                    pending.error = NotReplicated(range_)
                    held.setdefault(range_, []).extend(callbacks[start:end])
                    dropped.update(range(start, end))
            callbacks = [callback for index, callback in enumerate(callbacks)
                         if index not in dropped]
            for range_, kept in held.items():
                self._gate.hold(range_, kept)
        run_callbacks(callbacks)
        for pending in taken:
            pending.finish()
        if doubtful:
            # Everything accepted is on disk now, so disk is the truth: reload from it.
            self._reload_state()

    def _reload_state(self) -> None:
        for listener in self._reload_listeners:
            listener()

    def _refuse_all(self, taken: list[Command[Any]], error: StorageError) -> None:
        self._reload_state()
        for pending in taken:
            if pending.error is None:
                pending.error = error
            pending.finish()
        self._refused += len(taken)


def run_callbacks(callbacks: list[Callable[[], None]]) -> None:
    """Run after-commit callbacks in order; one that fails is logged, not spread."""
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("after-commit callback failed")
