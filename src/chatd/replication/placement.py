"""Who acts for each range: the placement table, and the epoch rules (sans-I/O).

A **range** is the set of conversations the ring gives one shard (`HashRing.shard_for`):
it is named after that shard, its *natural* owner. Every range has a **chain**, the
shards in ring-name order starting at its natural owner (`HashRing.chain`): the natural
owner, then the shard that replicates it, then the next one to take a failed member's
place, and so on. With 3 shards a, b, c: range a is [a, b, c], range b is [b, c, a],
range c is [c, a, b], so every shard replicates exactly one other range.

A `RangeState` says who acts for a range now: its **owner** (the single writer, the only
shard that acknowledges anything in it), its **replica** (holds every acknowledged record
of the range; None when replication is off or no other shard is up) and its **epoch**.
Every change of owner or replica makes a new state with a higher epoch. The rules:

- a state replaces another only with a higher epoch (`Placement.adopt`);
- an owner acknowledges only what its replica, at the owner's epoch, has made durable;
- a replica refuses anything from an epoch older than the newest it has seen.

So after a failover (epoch e+1, the old replica now owner) the old owner can no longer get
anything acknowledged: its only replica is the new owner, which refuses epoch e.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chatd.domain.ring import HashRing


@dataclass(frozen=True, slots=True)
class RangeState:
    range: str
    owner: str
    replica: str | None
    epoch: int

    def to_wire(self) -> dict[str, Any]:
        return {"range": self.range, "owner": self.owner, "replica": self.replica,
                "epoch": self.epoch}

    @classmethod
    def from_wire(cls, data: Any) -> RangeState:
        """Raises ValueError for a body that is not a range state."""
        if not isinstance(data, Mapping):
            raise ValueError("a range state must be a map")
        range_, owner, replica, epoch = (data.get("range"), data.get("owner"),
                                         data.get("replica"), data.get("epoch"))
        if not isinstance(range_, str) or not isinstance(owner, str) \
                or not (replica is None or isinstance(replica, str)) \
                or not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise ValueError(f"not a range state: {data!r}")
        return cls(range_, owner, replica, epoch)

    def involves(self, shard: str) -> bool:
        return shard in (self.owner, self.replica)


class Placement:
    """This shard's view of every range's state. Changed only through `adopt`, which
    keeps the newest epoch; listeners hear of every change."""

    def __init__(self, ring: HashRing, factor: int) -> None:
        if factor not in (1, 2):
            raise ValueError(f"replication factor must be 1 or 2, got {factor}")
        self.ring = ring
        self.factor = factor if len(ring.shards) > 1 else 1
        self._states: dict[str, RangeState] = {
            name: self.initial(name) for name in ring.shards}

    def initial(self, range_: str) -> RangeState:
        """Epoch 1: the natural owner, replicated to the next shard of its chain."""
        chain = self.ring.chain(range_)
        return RangeState(range_, chain[0], chain[1] if self.factor == 2 else None, 1)

    @property
    def replicated(self) -> bool:
        return self.factor == 2

    def state(self, range_: str) -> RangeState:
        return self._states[range_]

    def states(self) -> list[RangeState]:
        return [self._states[name] for name in self.ring.shards]

    def range_of(self, conversation_id: int) -> str:
        return self.ring.shard_for(conversation_id)

    def owner_of(self, conversation_id: int) -> str:
        return self._states[self.ring.shard_for(conversation_id)].owner

    def adopt(self, state: RangeState) -> bool:
        """Take `state` if it is newer than what is known; whether it was taken. A state
        for a range this ring does not have is ignored (a peer on another ring would
        have been refused at the handshake)."""
        current = self._states.get(state.range)
        if current is None or state.epoch <= current.epoch:
            return False
        shards = self.ring.shards
        if state.owner not in shards or state.replica == state.owner \
                or (state.replica is not None and state.replica not in shards):
            return False  # names no shard of this ring: a bug or a bad peer, not a state
        self._states[state.range] = state
        return True

    def adopt_all(self, states: Iterable[RangeState]) -> list[RangeState]:
        return [state for state in states if self.adopt(state)]

    def successor(self, range_: str, *, excluding: Iterable[str],
                  alive: Iterable[str]) -> str | None:
        """The first shard of the range's chain that is alive and not excluded: where a
        failed owner's or replica's place goes."""
        skip, up = set(excluding), set(alive)
        for shard in self.ring.chain(range_):
            if shard not in skip and shard in up:
                return shard
        return None

    def to_wire(self) -> list[dict[str, Any]]:
        return [state.to_wire() for state in self.states()]

    @staticmethod
    def from_wire(data: Any) -> list[RangeState]:
        if not isinstance(data, list):
            raise ValueError("a placement must be a list of range states")
        return [RangeState.from_wire(item) for item in data]
