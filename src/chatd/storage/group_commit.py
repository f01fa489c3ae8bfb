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
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from chatd.errors import ChatdError
from chatd.pending import Pending
from chatd.storage.errors import (
    CommandFailed,
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

    __slots__ = ("apply", "durable")

    def __init__(self, apply: Callable[[Batch], T], durable: bool = True) -> None:
        super().__init__()
        self.apply = apply
        #: False for writes that may be lost in a crash (hints): they never make a batch
        #: wait for an fsync; a batch syncs when any of its commands is durable.
        self.durable = durable


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

    def after_each_batch(self, listener: Callable[[], None]) -> None:
        """Call `listener` once a batch's waiters and callbacks have all been told (the
        WebSocket layer writes every delivery of the batch then, in the same step)."""
        self._batch_listeners.append(listener)

    def statistics(self) -> CommitStatistics:
        return CommitStatistics(self._batches, self._committed, self._refused,
                                self._failed_writes, self._largest, len(self._queue))

    async def submit(self, apply: Callable[[Batch], T]) -> T:
        """Run `apply` in the next batch and return its result once the batch is durable.

        If the caller is cancelled while waiting, the command still commits (or not) with
        its batch: a client that retries with the same client_msg_id gets the same answer.
        """
        self._check_open()
        async with self._room:
            pending = Command(apply)
            self._queue.append(pending)
            self._work.set()
            # Shielded so that the semaphore slot is returned only once the committer
            # is done with this command, whatever happens to the caller.
            with trio.CancelScope(shield=True):
                await pending.wait_finished()
        return await pending.wait()

    def enqueue(self, apply: Callable[[Batch], T], *, durable: bool = True) -> Command[T]:
        """Queue `apply` now, without waiting for room: commands enqueued one after another
        run in that order (a WebSocket's pipelined sends keep their order this way).
        Refuses when the queue is full, instead of growing without bound. A command that
        is not `durable` is written without an fsync unless it shares a batch with one
        that is."""
        self._check_open()
        if len(self._queue) >= self._max_pending:
            raise Overloaded("the commit queue is full")
        pending = Command(apply, durable)
        self._queue.append(pending)
        self._work.set()
        return pending

    def _check_open(self) -> None:
        if self._closing:
            raise ShuttingDown("the committer is closed")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The committer task. Returns after `close()` once every queued command is done."""
        task_status.started()
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._work.wait()
                self._work = trio.Event()
                continue
            self._commit_one_batch()
            for listener in self._batch_listeners:
                try:
                    listener()
                except Exception:
                    log.exception("an after-batch listener failed")
            # Let producers woken by this batch queue their next commands.
            await trio.lowlevel.checkpoint()

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
        while self._queue and len(taken) < self._max_batch:
            pending = self._queue.popleft()
            taken.append(pending)
            batch.durable = batch.durable or pending.durable
            mark = batch.mark()
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
        for callback in batch.after_commit:
            try:
                callback()
            except Exception:
                log.exception("after-commit callback failed")
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
