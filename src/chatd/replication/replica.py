"""The replica's side: apply what an owner ships, in order, and refuse stale owners.

For each range this shard backs, `Replica` knows the epoch and owner it follows and
where the stream is: `copying` between `replica.begin` and `replica.end`, then
`streaming`, expecting batch numbers without gaps. Everything is applied through the
group committer (synced), and answered only once durable: the owner acknowledges its
clients on that answer.

A copy never empties the replica first: until it has ended, what the replica held is
all there is besides the owner, and the owner may die mid-copy. The owner sends the
range's records in key order, family by family; each chunk *merges* into what is here:
its records are written, and the records held here between the previous chunk's last
key and this chunk's last key that the chunk does not have are deleted (the owner no
longer has them). `replica.end` deletes what is left after the last chunk. When the copy
has ended, "this shard holds every record of the range at this epoch" is written down
(meta `replica_copied:<range>`), and only then may it be promoted (`holds`).

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
from dataclasses import dataclass, field
from typing import Any

from chatd.pending import Pending
from chatd.replication import protocol
from chatd.replication.placement import Placement, RangeState
from chatd.replication.range_records import RangeRecords
from chatd.services.commands import Commands
from chatd.storage import Batch, Store, records
from chatd.storage.store import Operation

log = logging.getLogger(__name__)

OK: dict[str, Any] = {"ok": True}


@dataclass(slots=True)
class _Stream:
    epoch: int
    owner: str
    copying: bool
    expected_batch: int = 0
    #: While copying: per family, the last key the copy has covered (merged up to), and
    #: the families it has finished (the copy sends them in CONVERSATION_FAMILIES order).
    covered: dict[str, bytes] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)


def copied_marker(range_: str) -> str:
    """The meta record saying at which epoch this shard got a whole copy of `range_`."""
    return f"replica_copied:{range_}"


class Replica:
    def __init__(self, *, shard: str, placement: Placement, store: Store, commands: Commands,
                 ranges: RangeRecords, adopt: Callable[[RangeState], None]) -> None:
        """`adopt(state)` takes a newer range state (the coordinator persists it and
        tells the rest of the shard)."""
        self._shard = shard
        self._placement = placement
        self._store = store
        self._commands = commands
        self._ranges = ranges
        self._adopt = adopt
        self._streams: dict[str, _Stream] = {}
        #: The epoch of the last whole copy of each range this shard got (persisted).
        self._copied: dict[str, int] = {}
        for range_ in placement.ring.shards:
            epoch = store.get(records.META, copied_marker(range_))
            if isinstance(epoch, int):
                self._copied[range_] = epoch
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
            ops = self._range_ops(range_, body)
            if any(value is None for _, _, value in ops):
                raise protocol.malformed("a copy's records must be puts")
            return self._write(self._merge(range_, stream, ops))
        if method == protocol.END:
            if not stream.copying:
                return _refused("needs_copy", known)
            next_batch = protocol.whole_number(body, "next_batch")
            ops = self._merge(range_, stream, [])
            stream.copying = False
            stream.expected_batch = next_batch
            return self._write(ops, copied=(range_, epoch))
        if method == protocol.APPLY:
            batch_number = protocol.whole_number(body, "batch")
            ops = self._range_ops(range_, body)  # checked before it takes a number
            if stream.copying or batch_number != stream.expected_batch:
                # A lost batch: the only safe way on is a new copy.
                del self._streams[range_]
                return _refused("needs_copy", known)
            stream.expected_batch += 1
            self.applied_batches += 1
            return self._write(ops)
        raise protocol.malformed(f"unknown method {method!r}")

    def _range_ops(self, range_: str, body: Mapping[str, Any]) -> list[Operation]:
        """The ops of a chunk or apply, which may only be records of the range: a
        replica never lets an owner write its accounts, its meta or another range."""
        ops = protocol.operations(body, self._store.knows)
        if any(self._ranges.range_of_key(family, key) != range_ for family, key, _ in ops):
            raise protocol.malformed(f"records outside range {range_!r}")
        return ops

    def holds(self, range_: str) -> bool:
        """Whether this shard, the range's replica, got a whole copy of it at the
        current epoch: then it holds everything the owner acknowledged, and may take
        the range over."""
        state = self._placement.state(range_)
        return state.replica == self._shard and self._copied.get(range_) == state.epoch

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
        marker = copied_marker(range_)
        # Copied whole at this epoch before (the same owner copies again after a broken
        # stream): what is here still holds everything acknowledged, since a merge only
        # deletes what the owner no longer has, so this shard stays promotable. A copy
        # at a new epoch is a new pairing: promotable only once it has ended.
        recopy = self._copied.get(range_) == epoch
        if not recopy:
            self._copied.pop(range_, None)

        def barrier(batch: Batch) -> dict[str, Any]:
            # Answered once every write queued before it (applies of the old stream) is
            # on disk: the chunks are merged against the disk, which must hold them.
            if not recopy:
                batch.delete(records.META, marker)
            return OK

        return self._commands.enqueue(barrier)

    def _merge(self, range_: str, stream: _Stream, ops: list[Operation]) -> list[Operation]:
        """`ops` (a chunk, in the copy's order; [] at the end) plus deletes of what this
        shard holds of the range that the owner's copy skipped over."""
        merged: list[Operation] = []
        families = list(records.CONVERSATION_FAMILIES)
        by_family: dict[str, list[Operation]] = {}
        for op in ops:
            by_family.setdefault(op[0], []).append(op)
        reached = max((families.index(f) for f in by_family), default=len(families))
        for index, family in enumerate(families):
            if family in stream.finished:
                continue
            chunk = by_family.get(family, [])
            if index < reached or (index == reached and not chunk):
                # The copy has moved past this family: nothing more of it will come.
                upto = None
                stream.finished.add(family)
            elif chunk:
                upto = max(key for _, key, _ in chunk)
            else:
                continue
            sent = {key: value for _, key, value in chunk}
            held = self._ranges.own_rows(range_, family, after=stream.covered.get(family),
                                         upto=upto)
            merged += [(family, key, None) for key, _ in held if key not in sent]
            # A record the copy changes (a message deleted while this shard was away
            # arrives as its tombstone) is written as a delete and a put, as the owner
            # wrote it: the delete is what makes the purge take the old bytes off this
            # disk too (storage/store.py).
            merged += [(family, key, None) for key, value in held
                       if (copied := sent.get(key)) is not None
                       and bytes(copied) != bytes(value)]
            merged += chunk
            if upto is not None:
                stream.covered[family] = upto
        return merged

    def _write(self, ops: list[Operation], *,
               copied: tuple[str, int] | None = None) -> Pending[Any]:
        def apply(batch: Batch) -> dict[str, Any]:
            batch.extend_raw(ops)
            if copied is not None:
                batch.put(records.META, copied_marker(copied[0]), copied[1])
                batch.after_commit.append(lambda: self._copied.__setitem__(*copied))
            return OK

        return self._commands.enqueue(apply)

    def _stale(self, known: RangeState) -> dict[str, Any]:
        self.refused_stale += 1
        return _refused("stale_epoch", known)


def _refused(code: str, known: RangeState) -> dict[str, Any]:
    return {"refused": code, "state": known.to_wire()}
