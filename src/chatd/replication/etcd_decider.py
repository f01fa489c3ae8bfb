"""Placement decided in etcd (Patroni's split: etcd says who leads, chatd ships its logs).

Keys, under `replication.etcd_prefix` and the ring's signature (so clusters, and rings,
sharing an etcd never meet):

    <prefix>/<ring>/ranges/<range>   the range's state (JSON: owner, replica, epoch);
                                     no lease: it outlives every shard
    <prefix>/<ring>/shards/<shard>   present while the shard holds its lease (TTL =
                                     replication.failover_after)

Every change of a range is one transaction: *if the key's mod revision is still the one
this shard last saw, write the new state*. So of two shards deciding at once one wins,
and the other re-reads. Every shard watches the prefix and adopts what it sees.

- **Failover.** When an owner's shard key goes (its lease expired: it is dead, stalled
  or cut off from etcd for `failover_after`), the range's replica takes the range over
  with epoch + 1 (when `auto_failover`; else the operator's `promote` does the same
  transaction), and the next live shard of the chain becomes its replica.
- **Fencing.** A shard acknowledges only while its lease is held (`LeaseKeeper.held`,
  which stops short of the lease's expiry as etcd sees it). An owner cut off from etcd
  stops acknowledging before its replica can take over; and the new owner refuses the
  old epoch, so the old owner's replication, hence its acknowledgements, stop for good.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from chatd.coordination.errors import CoordinationError, WatchCompacted
from chatd.coordination.etcd import EtcdClient
from chatd.coordination.lease import LeaseKeeper
from chatd.coordination.wire import Compare, KeyValue, Op
from chatd.replication.coordinator import Coordinator
from chatd.replication.placement import RangeState

log = logging.getLogger(__name__)


class EtcdDecider:
    def __init__(self, coordinator: Coordinator, client: EtcdClient, *, prefix: str,
                 ttl: int, auto_failover: bool) -> None:
        self._coordinator = coordinator
        self._client = client
        ring = coordinator.placement.ring
        self._base = f"{prefix.rstrip('/')}/{ring.signature()}/"
        self._ttl = ttl
        self.auto_failover = auto_failover
        self._keeper = LeaseKeeper(client, ttl, on_regained=self._regained)
        #: The mod revision of each range's key as last seen (0: absent).
        self._revisions: dict[str, int] = {}
        #: Shards whose key is present: they hold their lease.
        self._alive: set[str] = set()
        #: Since when each shard's key has been missing. A shard not registered yet (the
        #: cluster is starting) counts as alive for one TTL, as if its lease were running
        #: out; a key deleted by etcd means a lease that ran out already.
        self._absent_since: dict[str, float] = {}
        self._registered = trio.Event()
        self.transactions = 0

    # -- Decider ------------------------------------------------------------------------------

    def lease_held(self) -> bool:
        return self._keeper.held()

    def alive(self) -> set[str]:
        now = trio.current_time()
        return self._alive | {shard for shard, since in self._absent_since.items()
                              if now - since < self._ttl}

    async def change(self, current: RangeState, new: RangeState) -> bool:
        key = self._range_key(new.range)
        revision = self._revisions.get(new.range, 0)
        condition = (Compare.mod_revision(key, "=", revision) if revision
                     else Compare.version(key, "=", 0))
        try:
            result = await self._client.txn([condition], [Op.put(key, _encode(new))],
                                            [Op.get(key)])
        except CoordinationError as exc:
            log.warning("range %s: could not write epoch %d to etcd: %s", new.range,
                        new.epoch, exc)
            return False
        self.transactions += 1
        if not result.succeeded:
            found = result.responses[0] if result.responses else None
            if isinstance(found, KeyValue):
                self._seen_range(new.range, found)
            return False
        self._revisions[new.range] = result.revision
        self._coordinator.adopt(new)
        return True

    # -- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Hold the lease, publish the placement's first epoch where etcd has none, adopt
        what etcd says, then follow it. The coordinator is settled once etcd was read."""
        async with self._client, trio.open_nursery() as nursery:
            lease = await nursery.start(self._keeper.run)
            await self._register(lease)
            task_status.started()
            while True:
                try:
                    revision = await self._load()
                    self._coordinator.settled.set()
                    await self._follow(revision)
                except WatchCompacted:
                    continue  # read everything again
                except CoordinationError as exc:
                    log.warning("etcd: %s; retrying", exc)
                    await trio.sleep(0.5)

    async def _register(self, lease: int) -> None:
        shard = self._coordinator.shard
        while True:
            try:
                await self._client.put(self._shard_key(shard), b"{}", lease=lease)
                self._registered.set()
                return
            except CoordinationError as exc:
                log.warning("etcd: cannot register shard %s yet: %s", shard, exc)
                await trio.sleep(0.5)

    def _regained(self, lease: int) -> None:
        # The shard key went with the old lease: put it back under the new one. (From
        # the keeper's task, which must not block: a task of its own.)
        trio.lowlevel.spawn_system_task(self._register, lease)

    async def _load(self) -> int:
        placement = self._coordinator.placement
        kvs, revision = await self._client.get_prefix(self._base)
        present = {kv.key for kv in kvs}
        for state in placement.states():
            key = self._range_key(state.range)
            if key not in present:
                # First start of this cluster (or of this ring): epoch 1 as the
                # placement has it, unless another shard wrote one meanwhile.
                await self._client.txn([Compare.version(key, "=", 0)],
                                       [Op.put(key, _encode(placement.initial(state.range)))])
        kvs, revision = await self._client.get_prefix(self._base)
        self._alive = set()
        for kv in kvs:
            self._seen(kv, deleted=False)
        now = trio.current_time()
        for shard in placement.ring.shards:
            if shard not in self._alive:
                self._absent_since.setdefault(shard, now)
        return revision

    async def _follow(self, revision: int) -> None:
        async with self._client.watch_prefix(self._base, start_revision=revision + 1) as events:
            async for event in events:
                self._seen(event.kv, deleted=event.kind == "delete")

    def _seen(self, kv: KeyValue, *, deleted: bool) -> None:
        rest = kv.key[len(self._base):]
        kind, _, name = rest.partition("/")
        if kind == "shards":
            if deleted:
                self._alive.discard(name)
                self._absent_since[name] = trio.current_time() - self._ttl
                log.info("etcd: shard %s lost its lease", name)
            else:
                self._alive.add(name)
                self._absent_since.pop(name, None)
            self._coordinator.wake()
        elif kind == "ranges" and not deleted:
            self._seen_range(name, kv)

    def _seen_range(self, name: str, kv: KeyValue) -> None:
        try:
            state = RangeState.from_wire(json.loads(kv.value))
        except (ValueError, json.JSONDecodeError) as exc:
            log.error("etcd: range %s holds an unreadable state: %s", name, exc)
            return
        if state.range != name:
            log.error("etcd: key of range %s holds range %s; ignored", name, state.range)
            return
        self._revisions[name] = kv.mod_revision
        self._coordinator.adopt(state)

    def _range_key(self, range_: str) -> str:
        return f"{self._base}ranges/{range_}"

    def _shard_key(self, shard: str) -> str:
        return f"{self._base}shards/{shard}"

    def status(self) -> dict[str, Any]:
        return {"etcd": True, "alive": sorted(self._alive), "transactions": self.transactions}


def _encode(state: RangeState) -> bytes:
    return json.dumps(state.to_wire(), sort_keys=True).encode()
