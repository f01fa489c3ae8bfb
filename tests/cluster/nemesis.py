"""The fault scheduler of a fault-injection run: seeded, one fault at a time, always healed.

`Nemesis.run` loops until cancelled: a quiet gap, then one fault held for a random time,
then healed. The faults (weights in `FAULTS`):

- `kill`: SIGKILL a random shard; start it again after the hold.
- `pause`: SIGSTOP a random shard (a GC-like stall); SIGCONT after the hold.
- `one_way`: bytes from one shard to one peer are held while the other way flows.
- `owner_alone`: a shard cut from both peers and from etcd: the owner of its range can
  reach nobody, and (with replication) loses its lease.
- `replica_alone`: the replica of a range cut from both peers, still reaching etcd
  (before replication reports replicas: a random shard).
- `pair`: the link between a range's owner and its replica cut both ways, both still
  reaching the third shard and etcd.
- `etcd`: etcd stopped, killed or paused (SIGSTOP), and started or resumed after the
  hold; only when there is one.

A partition sometimes has a pause of one of its shards overlapping it (a stall on top of
a partition: the classic way for an old owner to act on a lease it lost). At most one
shard is ever down or stalled, except for that overlap, which stalls a shard the fault
already cut off: the system is built to survive one failure.

All choices come from the `random.Random` given (seeded by the run); what happened, and
when, is in `events` and the totals in `counts`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from tests.cluster.harness import NAMES
from tests.cluster.proxied import (
    Placement,
    ProxiedCluster,
    link_between,
    peers_of,
    settled,
)

#: How often each fault is picked (etcd only with an etcd).
FAULTS: dict[str, int] = {"kill": 3, "pause": 2, "one_way": 2, "owner_alone": 2,
                          "replica_alone": 1, "pair": 1, "etcd": 1}
PARTITIONS = frozenset({"one_way", "owner_alone", "replica_alone", "pair"})


@dataclass(frozen=True)
class Event:
    """One fault: when it started and was healed (seconds since the run began)."""

    started: float
    healed: float
    what: str

    def __str__(self) -> str:
        return f"{self.started:7.2f}-{self.healed:7.2f} s  {self.what}"


class Nemesis:
    """Injects faults into `cluster` until cancelled (the module docstring).

    `placement(range)` names a range's acting owner and replica now, from the shards'
    own reports (None while there are none: the range's natural owner and a random
    peer stand in); `hold` and `quiet` are (min, max) seconds of a fault and of the gap
    before the next one."""

    def __init__(self, cluster: ProxiedCluster, rng: random.Random, *,
                 placement: Placement,
                 hold: tuple[float, float] = (1.0, 5.0),
                 quiet: tuple[float, float] = (0.5, 2.0),
                 overlap_chance: float = 0.3) -> None:
        self.cluster = cluster
        self.rng = rng
        self.placement = placement
        self.hold = hold
        self.quiet = quiet
        self.overlap_chance = overlap_chance
        self.events: list[Event] = []
        self.counts: Counter[str] = Counter()
        self._began = trio.current_time()
        injectors: dict[str, Callable[[float], Awaitable[None]]] = {
            "kill": self._kill, "pause": self._pause, "one_way": self._one_way,
            "owner_alone": self._owner_alone, "replica_alone": self._replica_alone,
            "pair": self._pair, "etcd": self._etcd}
        #: The faults this cluster can have (no etcd, no etcd faults), with their weights.
        self._faults = {name: injectors[name] for name in FAULTS
                        if name != "etcd" or cluster.etcd is not None}
        self._weights = [FAULTS[name] for name in self._faults]

    def summary(self) -> dict[str, int]:
        return {"kills": self.counts["kill"],
                "partitions": sum(self.counts[kind] for kind in PARTITIONS),
                "pauses": self.counts["pause"] + self.counts["overlapping pause"]
                + self.counts["etcd pause"],
                "etcd_restarts": self.counts["etcd"]}

    async def run(self) -> None:
        self._began = trio.current_time()
        try:
            while True:
                await trio.sleep(self.rng.uniform(*self.quiet))
                kind = self.rng.choices(list(self._faults), self._weights)[0]
                await self._faults[kind](self.rng.uniform(*self.hold))
        finally:
            with trio.CancelScope(shield=True):
                await self.cluster.heal_all()

    def _now(self) -> float:
        return trio.current_time() - self._began

    async def _held(self, kind: str, what: str, seconds: float,
                    overlap: tuple[str, ...] = ()) -> None:
        """Count and log a fault (already applied), hold it for `seconds`, with a pause
        of one of `overlap` on top, sometimes."""
        started = self._now()
        self.counts[kind] += 1
        try:
            async with trio.open_nursery() as nursery:
                if overlap and self.rng.random() < self.overlap_chance:
                    nursery.start_soon(self._overlapping_pause, self.rng.choice(overlap),
                                       seconds)
                await trio.sleep(seconds)
        finally:
            self.events.append(Event(started, self._now(), what))

    async def _overlapping_pause(self, shard: str, within: float) -> None:
        delay = self.rng.uniform(0, within / 2)
        await trio.sleep(delay)
        if not self.cluster[shard].running:
            return
        started = self._now()
        self.cluster.pause(shard)
        self.counts["overlapping pause"] += 1
        try:
            await trio.sleep(self.rng.uniform(0.5, within - delay))
        finally:
            self.cluster.resume(shard)
            self.events.append(Event(started, self._now(), f"  + pause {shard} (overlapping)"))

    # -- the faults -----------------------------------------------------------------------

    async def _kill(self, seconds: float) -> None:
        victim = self.rng.choice(NAMES)
        self.cluster.kill(victim)
        try:
            await self._held("kill", f"kill -9 {victim}", seconds)
        finally:
            with trio.CancelScope(shield=True):
                await self.cluster.restart(victim)

    async def _pause(self, seconds: float) -> None:
        victim = self.rng.choice(NAMES)
        self.cluster.pause(victim)
        try:
            await self._held("pause", f"SIGSTOP {victim}", seconds)
        finally:
            self.cluster.resume(victim)

    async def _one_way(self, seconds: float) -> None:
        sender = self.rng.choice(NAMES)
        receiver = self.rng.choice(peers_of(sender))
        self.cluster.hold_one_way(sender, receiver)
        try:
            await self._held("one_way", f"hold bytes {sender} -> {receiver}", seconds,
                             overlap=(sender, receiver))
        finally:
            self.cluster.heal_network()

    async def _owner_alone(self, seconds: float) -> None:
        owner = self.rng.choice(NAMES)
        self.cluster.isolate(owner, from_etcd=True)
        try:
            await self._held("owner_alone", f"isolate {owner} (peers and etcd)", seconds,
                             overlap=(owner,))
        finally:
            self.cluster.heal_network()

    async def _owner_and_replica(self, range_name: str) -> tuple[str, str]:
        stand_in = (range_name, self.rng.choice(peers_of(range_name)))  # drawn either way
        return await self.placement(range_name) or stand_in

    async def _replica_alone(self, seconds: float) -> None:
        range_name = self.rng.choice(NAMES)
        _, replica = await self._owner_and_replica(range_name)
        self.cluster.isolate(replica, from_etcd=False)
        try:
            await self._held("replica_alone", f"isolate {replica} (replica of range "
                             f"{range_name}; peers only)", seconds, overlap=(replica,))
        finally:
            self.cluster.heal_network()

    async def _pair(self, seconds: float) -> None:
        range_name = self.rng.choice(NAMES)
        owner, replica = await self._owner_and_replica(range_name)
        self.cluster.links[link_between(owner, replica)].sever()
        try:
            await self._held("pair", f"cut {owner} <-> {replica} (range {range_name})",
                             seconds, overlap=(owner, replica))
        finally:
            self.cluster.heal_network()

    async def _etcd(self, seconds: float) -> None:
        etcd = self.cluster.etcd
        assert etcd is not None
        how = self.rng.choice(["stop", "kill", "pause"])
        await settled({"stop": etcd.stop, "kill": etcd.kill, "pause": etcd.pause}[how]())
        try:
            await self._held("etcd pause" if how == "pause" else "etcd", f"{how} etcd",
                             seconds)
        finally:
            with trio.CancelScope(shield=True):
                await settled(etcd.resume() if how == "pause" else etcd.start())
