"""The replica's side: apply what an owner ships, in order, and refuse stale owners.

For each range this shard backs, `Replica` knows the epoch and owner it follows and
where the stream is: `copying` between `replica.begin` and `replica.end`, then
`streaming`, expecting batch numbers without gaps. Everything is applied through the
group committer (synced), and answered only once durable: the owner acknowledges its
clients on that answer.

Refusals are answers, not errors (`{"refused": code, "state": ...}`), so the owner
learns why and what this shard knows:

    stale_epoch   the request's epoch is older than this shard's, or the same epoch
                  under another owner: the sender is no longer the owner
    needs_copy    the stream is not in a state to take this (a restart lost it, a gap,
                  a batch before the copy ended): the owner starts a new copy
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chatd.pending import Pending
from chatd.replication import protocol
from chatd.replication.placement import Placement, RangeState
from chatd.services.commands import Commands
from chatd.storage import Batch, Store
from chatd.storage.store import Operation

log = logging.getLogger(__name__)

OK: dict[str, Any] = {"ok": True}


@dataclass(slots=True)
class _Stream:
    epoch: int
    owner: str
    copying: bool
    expected_batch: int = 0


class Replica:
    def __init__(self, *, shard: str, placement: Placement, store: Store, commands: Commands,
                 range_records: Callable[[str], list[Operation]],
                 adopt: Callable[[RangeState], None]) -> None:
        """`range_records(range)` lists deletes of every record this shard holds of the
        range (what a copy replaces); `adopt(state)` takes a newer range state (the
        coordinator persists it and tells the rest of the shard)."""
        self._shard = shard
        self._placement = placement
        self._store = store
        self._commands = commands
        self._range_records = range_records
        self._adopt = adopt
        self._streams: dict[str, _Stream] = {}
        #: Batches applied and copies begun, for /metrics.
        self.applied_batches = 0
        self.copies_begun = 0
        self.refused_stale = 0

    def handle(self, method: str, body: Any) -> Any:
        range_, epoch = protocol.header(body)
        if range_ not in self._placement.ring.shards:
            raise protocol.malformed(f"no range {range_!r}")
        assert isinstance(body, Mapping)
        if method == protocol.BEGIN:
            return self._begin(range_, epoch, body)
        stream = self._streams.get(range_)
        known = self._placement.state(range_)
        if epoch < known.epoch:
            return self._stale(known)
        if stream is None or stream.epoch != epoch:
            return _refused("needs_copy", known)
        if method == protocol.CHUNK:
            if not stream.copying:
                return _refused("needs_copy", known)
            return self._write(protocol.operations(body, self._store.knows))
        if method == protocol.END:
            if not stream.copying:
                return _refused("needs_copy", known)
            stream.copying = False
            stream.expected_batch = protocol.whole_number(body, "next_batch")
            return OK
        if method == protocol.APPLY:
            batch_number = protocol.whole_number(body, "batch")
            if stream.copying or batch_number != stream.expected_batch:
                # A lost batch: the only safe way on is a new copy.
                del self._streams[range_]
                return _refused("needs_copy", known)
            stream.expected_batch += 1
            self.applied_batches += 1
            return self._write(protocol.operations(body, self._store.knows))
        raise protocol.malformed(f"unknown method {method!r}")

    def forget(self, range_: str) -> None:
        """This shard no longer backs `range_` (it owns it now, or another shard backs
        it): a later stream must start with a copy."""
        self._streams.pop(range_, None)

    def streaming(self) -> dict[str, int]:
        """Ranges followed, with the next batch expected (for status)."""
        return {name: stream.expected_batch for name, stream in self._streams.items()
                if not stream.copying}

    def _begin(self, range_: str, epoch: int, body: Mapping[str, Any]) -> Any:
        owner = body.get("owner")
        if not isinstance(owner, str) or owner not in self._placement.ring.shards \
                or owner == self._shard:
            raise protocol.malformed("owner must be another shard of the ring")
        known = self._placement.state(range_)
        if epoch < known.epoch or (epoch == known.epoch and owner != known.owner):
            return self._stale(known)
        if epoch == known.epoch and known.replica != self._shard:
            # This epoch names another replica: a copy here would back nobody.
            return self._stale(known)
        if epoch > known.epoch:
            self._adopt(RangeState(range_, owner, self._shard, epoch))
        self._streams[range_] = _Stream(epoch, owner, copying=True)
        self.copies_begun += 1
        # What this shard held of the range may be older than the owner's, or hold
        # entries no one acknowledged (written here as an owner that then lost the
        # range): the copy replaces all of it.
        return self._write(self._range_records(range_))

    def _write(self, ops: list[Operation]) -> Pending[Any]:
        def apply(batch: Batch) -> dict[str, Any]:
            batch.extend_raw(ops)
            return OK

        return self._commands.enqueue(apply)

    def _stale(self, known: RangeState) -> dict[str, Any]:
        self.refused_stale += 1
        return _refused("stale_epoch", known)


def _refused(code: str, known: RangeState) -> dict[str, Any]:
    return {"refused": code, "state": known.to_wire()}
