"""The sweeper: on each owner, expired and retained messages become tombstones, and the
media references of deleted messages are dropped on the media's shards.

Every `limits.sweep_interval` seconds it reads the `expiries` index up to now (batches of
`SWEEP_BATCH`, one command each) and, when `limits.retention_days` is set, once a minute
walks the logs of the conversations this shard serves from where the previous walk
stopped. It acts only for ranges this shard serves (`serves`): a replica holds the same
rows and leaves them to the owner, whose tombstones it applies. Reads hide what is due
before the sweep (services/deletion.py `shown`), so the sweep's delay shows nowhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio

from chatd.config import LimitsConfig
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.deletion import Deletions
from chatd.storage import Store, records

if TYPE_CHECKING:
    from chatd.services.media import MediaService

log = logging.getLogger(__name__)

#: Entries one sweep command tombstones (one batch).
SWEEP_BATCH = 256
#: Seconds between retention walks (they read every served conversation's oldest entries).
RETENTION_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class SweepReport:
    expired: int
    retired: int
    released: int


class Sweeper:
    def __init__(self, *, store: Store, deletions: Deletions, commands: Commands,
                 limits: LimitsConfig, clock: Clock) -> None:
        self._store = store
        self._deletions = deletions
        self._commands = commands
        self._limits = limits
        self._clock = clock
        #: Whether this shard acts as the owner of a conversation now (the wiring sets
        #: it to the coordinator's answer).
        self.serves: Callable[[int], bool] = lambda _conversation_id: True
        self.media: MediaService | None = None
        # Retention: per conversation, the seq up to which its log is past retention
        # (in memory: after a restart the first walk reads its tombstones again).
        self._retired: dict[int, int] = {}
        self._last_retention = -RETENTION_EVERY

    async def sweep(self, *, retention: bool = True) -> SweepReport:
        """One pass; `retention`: walk the logs for retention too (when it is on)."""
        expired = await self._expire()
        retired = 0
        if retention and self._limits.retention_days > 0:
            retired = await self._retire()
        released = 0
        if self.media is not None:
            released = await self.media.release_pending(self.serves)
        return SweepReport(expired, retired, released)

    async def _expire(self) -> int:
        now = self._clock.now_ms()
        count = 0
        start = records.triple(0, 0, 0)
        stop = records.triple(now + 1, 0, 0)
        while True:
            rows = self._store.range(records.EXPIRIES, start, stop, limit=SWEEP_BATCH)
            due = [key for key, _ in rows if self.serves(key[1])]
            if due:
                count += await self._commands.submit(partial(self._deletions.expire, due))
            if len(rows) < SWEEP_BATCH:
                return count
            start = records.triple(*rows[-1][0]) + b"\x00"

    async def _retire(self) -> int:
        cutoff = self._deletions.retention_cutoff(self._clock.now_ms())
        count = 0
        for conversation_id, _ in self._store.scan(records.CONVERSATIONS, b""):
            if not self.serves(conversation_id):
                continue
            after = self._retired.get(conversation_id, 0)
            while True:
                reached = await self._commands.submit(partial(
                    self._deletions.retire, conversation_id, after, SWEEP_BATCH, cutoff))
                count += reached - after
                if reached - after < SWEEP_BATCH:
                    break
                after = reached
            self._retired[conversation_id] = reached
        return count

    async def run(self) -> None:
        """The background task: a pass every `limits.sweep_interval` seconds."""
        while True:
            await trio.sleep(self._limits.sweep_interval)
            walk = trio.current_time() - self._last_retention >= RETENTION_EVERY
            if walk:
                self._last_retention = trio.current_time()
            try:
                await self.sweep(retention=walk)
            except Exception:
                log.exception("the sweep failed; retrying at the next interval")
