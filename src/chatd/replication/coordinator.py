"""Deciding placement: who owns and who backs each range, and moving them when shards fail.

The `Coordinator` holds this shard's `Placement` and is the only thing that changes it.
A change comes from one of:

- the **decider**: with etcd configured, `EtcdDecider` (chatd/replication/etcd_decider.py)
  writes every change as an etcd transaction and hears everyone's through a watch; without
  etcd, `LocalDecider` takes the change here and tells the peers (gossip), and failover of
  an owner is the operator's (`promote`);
- a replica's refusal, which carries a newer state (this shard lost the range);
- a copy begun by a new owner, which names its epoch.

Every adopted state is persisted (meta `placement`) before the shard acts on it, and the
rest of the shard is told: the shipper ends streams to old replicas, the replica side
forgets streams it no longer follows, the conversation owner drops cached state of a
range it took over or gave up.

The recovery loop: a range this shard owns whose stream is blocked is copied again, to
the same replica if it answers, else to the next shard of the range's chain under a new
epoch. A range that lost its replica altogether (no other shard up) is acknowledged alone
until one is back, then gets one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import trio

from chatd.errors import ChatdError, Conflict, Unavailable
from chatd.replication import protocol
from chatd.replication.placement import Placement, RangeState
from chatd.replication.replica import Replica
from chatd.replication.shipper import Replicated, Shipper
from chatd.services.commands import Commands
from chatd.services.routing import Peers
from chatd.storage import Batch, Store, records

log = logging.getLogger(__name__)

#: The meta record that holds the placement this shard last adopted.
PLACEMENT_META = "placement"


class Decider(Protocol):
    """Where placement changes are decided (etcd, or this shard alone)."""

    async def change(self, current: RangeState, new: RangeState) -> bool:
        """Make `new` the range's state if it is still `current`; whether it was."""
        ...

    def lease_held(self) -> bool:
        """Whether this shard may acknowledge now."""
        ...

    def alive(self) -> set[str] | None:
        """The shards holding their lease, if the decider knows (etcd); else None."""
        ...

    @property
    def auto_failover(self) -> bool:
        """Whether a replica takes its range over when the owner's lease is gone."""
        ...


class Coordinator:
    def __init__(self, *, shard: str, placement: Placement, store: Store, commands: Commands,
                 shipper: Shipper, replica: Replica,
                 forget_range: Callable[[str], None], request_timeout: float,
                 replica_grace: float) -> None:
        """`replica_grace`: seconds a replica may be unreachable before its place goes
        to the next shard (a restart, or a shard still starting, is not a failure)."""
        self.shard = shard
        self.placement = placement
        self._store = store
        self._commands = commands
        self._shipper = shipper
        self._replica = replica
        self._forget_range = forget_range
        self._timeout = request_timeout
        self._grace = replica_grace
        #: When each peer was last seen down (from the start: peers not yet linked).
        self._down_since: dict[str, float] = {}
        self.decider: Decider = LocalDecider(self)
        #: A conversation's range (the ring's hash of its id, cached: asked per command).
        self.range_of: Callable[[int], str] = placement.range_of
        self.peers: Peers | None = None
        #: Set once this shard has learnt the current epochs (from etcd or a peer), or
        #: found nobody to learn them from: until then it serves no range it owns.
        self.settled = trio.Event()
        self._wake = trio.Event()
        #: Ranges just taken over, until the writes queued before are on disk.
        self._arriving: set[str] = set()
        self.failovers = 0
        self.replica_moves = 0
        self._load()

    # -- adopting states ----------------------------------------------------------------------

    def _load(self) -> None:
        stored = self._store.get(records.META, PLACEMENT_META)
        if stored is None:
            return
        try:
            states = Placement.from_wire(stored)
        except ValueError:
            log.error("the stored placement is unreadable; starting from epoch 1")
            return
        self.placement.adopt_all(states)

    def adopt(self, state: RangeState) -> bool:
        """Take a newer state of a range (from anywhere); whether it was newer."""
        before = self.placement.state(state.range)
        if not self.placement.adopt(state):
            return False
        log.info("range %s: epoch %d, owner %s, replica %s (was epoch %d, owner %s, "
                 "replica %s)", state.range, state.epoch, state.owner, state.replica,
                 before.epoch, before.owner, before.replica)
        if before.owner != state.owner:
            if state.owner == self.shard:
                self.failovers += 1
                self._arrive(state.range)
            # Taken over or given up: what is cached of its conversations is stale.
            self._forget_range(state.range)
        if state.replica != self.shard or state.owner == self.shard:
            self._replica.forget(state.range)
        self._shipper.placement_changed(state)
        self._persist()
        self._wake.set()
        return True

    def _arrive(self, range_: str) -> None:
        """This shard just became the range's owner. Records of it applied as a replica
        may still be queued in the committer (the previous owner's last batches): serve
        nothing of it until they are on disk, then read its conversations afresh, or a
        send would number from a head that misses them."""
        self._arriving.add(range_)

        def arrived(_done: Any) -> None:
            self._arriving.discard(range_)
            self._forget_range(range_)

        try:
            self._commands.enqueue(_nothing).add_done_callback(arrived)
        except Exception:
            log.exception("could not queue the hand-over barrier; serving range %s anyway",
                          range_)
            self._arriving.discard(range_)

    def adopt_all(self, states: list[RangeState]) -> None:
        for state in states:
            self.adopt(state)

    def _persist(self) -> None:
        snapshot = self.placement.to_wire()

        def apply(batch: Batch) -> None:
            batch.put(records.META, PLACEMENT_META, snapshot)

        try:
            self._commands.enqueue(apply)
        except Exception:
            log.exception("could not persist the placement")

    # -- what the rest of the shard asks --------------------------------------------------------

    def serves(self, conversation_id: int) -> bool:
        """Whether this shard acts as the conversation's owner now: it owns its range,
        knows the current epochs, and its replica has had a whole copy at this epoch."""
        if not self.settled.is_set():
            return False
        range_ = self.range_of(conversation_id)
        return self.placement.state(range_).owner == self.shard \
            and range_ not in self._arriving and self._shipper.ready(range_)

    def lease_held(self) -> bool:
        return self.decider.lease_held()

    def status(self) -> dict[str, Any]:
        streams = {stream["range"]: stream for stream in self._shipper.streams()}
        following = self._replica.streaming()
        ranges = []
        for state in self.placement.states():
            entry: dict[str, Any] = state.to_wire()
            stream = streams.get(state.range)
            if state.owner == self.shard:
                entry["acking"] = self.settled.is_set() and self.lease_held() and (
                    state.replica is None or (stream is not None
                                              and stream["mode"] == "streaming"))
                if stream is not None:
                    entry["stream"] = stream
            elif state.replica == self.shard:
                entry["following"] = state.range in following
            ranges.append(entry)
        return {"shard": self.shard, "factor": self.placement.factor,
                "settled": self.settled.is_set(), "lease": self.lease_held(),
                "failovers": self.failovers, "replica_moves": self.replica_moves,
                "ranges": ranges}

    def prometheus(self) -> list[str]:
        lines = ["# TYPE chatd_replication_epoch gauge"]
        lines += [f'chatd_replication_epoch{{range="{state.range}",owner="{state.owner}",'
                  f'replica="{state.replica or ""}"}} {state.epoch}'
                  for state in self.placement.states()]
        streams = self._shipper.streams()
        lines.append("# TYPE chatd_replication_lag_seconds gauge")
        lines += [f'chatd_replication_lag_seconds{{range="{stream["range"]}",'
                  f'replica="{stream["replica"]}"}} {stream["lag_seconds"]:.6f}'
                  for stream in streams]
        lines.append("# TYPE chatd_replication_streaming gauge")
        lines += [f'chatd_replication_streaming{{range="{stream["range"]}"}} '
                  f'{int(stream["mode"] == "streaming")}' for stream in streams]
        lines.append("# TYPE chatd_replication_shipped_batches_total counter")
        lines += [f'chatd_replication_shipped_batches_total{{range="{stream["range"]}"}} '
                  f'{stream["shipped_batches"]}' for stream in streams]
        lines.append("# TYPE chatd_replication_copies_total counter")
        lines += [f'chatd_replication_copies_total{{range="{stream["range"]}"}} '
                  f'{stream["copies"]}' for stream in streams]
        lines += [
            "# TYPE chatd_replication_failovers_total counter",
            f"chatd_replication_failovers_total {self.failovers}",
            "# TYPE chatd_replication_replica_moves_total counter",
            f"chatd_replication_replica_moves_total {self.replica_moves}",
            "# TYPE chatd_replication_applied_batches_total counter",
            f"chatd_replication_applied_batches_total {self._replica.applied_batches}",
            "# TYPE chatd_replication_stale_epochs_refused_total counter",
            f"chatd_replication_stale_epochs_refused_total {self._replica.refused_stale}",
            "# TYPE chatd_replication_lease_held gauge",
            f"chatd_replication_lease_held {int(self.lease_held())}",
        ]
        return lines

    # -- peers --------------------------------------------------------------------------------

    def handle_request(self, peer: str, method: str, body: Any) -> Any:
        if method in protocol.REPLICA_METHODS:
            return self._replica.handle(method, body)
        if method == protocol.PLACEMENT_CLAIM:
            try:
                return self._claimed(body)
            except ValueError as exc:
                raise protocol.malformed(str(exc)) from None
        if method == protocol.PLACEMENT_GET:
            self._adopt_wire(body.get("states") if isinstance(body, dict) else None)
            return {"states": self.placement.to_wire()}
        raise protocol.malformed(f"unknown method {method!r}")

    async def claim(self, shard: str, state: RangeState) -> bool:
        """Ask `shard` to take `state` (placement.claim); whether it did."""
        peers = self.peers
        if peers is None or not peers.is_up(shard):
            return False
        try:
            answer = await peers.start_request(shard, protocol.PLACEMENT_CLAIM,
                                               state.to_wire()).wait()
        except ChatdError as exc:
            log.warning("range %s: %s did not take epoch %d: %s", state.range, shard,
                        state.epoch, exc)
            return False
        if isinstance(answer, dict) and answer.get("ok") is True:
            return True
        if isinstance(answer, dict):
            self._adopt_wire([answer.get("state")])
        return False

    def _claimed(self, body: Any) -> dict[str, Any]:
        state = RangeState.from_wire(body)
        known = self.placement.state(state.range)
        if state == known or self.adopt(state):
            return {"ok": True}
        return {"refused": "stale_epoch", "state": known.to_wire()}

    def handle_post(self, peer: str, method: str, body: Any) -> bool:
        """Whether `method` was a placement post (handled)."""
        if method != protocol.PLACEMENT_PUT:
            return False
        self._adopt_wire(body.get("states") if isinstance(body, dict) else None)
        return True

    def peer_up(self, peer: str) -> None:
        """Exchange placements with a peer that (re)joined: the newer epochs win."""
        peers = self.peers
        if peers is None:
            return
        call = peers.start_request(peer, protocol.PLACEMENT_GET,
                                   {"states": self.placement.to_wire()})

        def answered(done: Any) -> None:
            if done.error is None and isinstance(done.result, dict):
                self._adopt_wire(done.result.get("states"))
                if not isinstance(self.decider, LocalDecider) or self.settled.is_set():
                    return
                self.settled.set()
                log.info("placement learnt from %s", peer)

        call.add_done_callback(answered)
        self._wake.set()

    def peer_down(self, peer: str) -> None:
        self._down_since[peer] = trio.current_time()
        self._wake.set()

    def _adopt_wire(self, data: Any) -> None:
        try:
            states = Placement.from_wire(data)
        except ValueError as exc:
            log.warning("a peer sent a malformed placement: %s", exc)
            return
        self.adopt_all(states)

    def gossip(self) -> None:
        peers = self.peers
        if peers is None:
            return
        body = {"states": self.placement.to_wire()}
        for shard in self.placement.ring.shards:
            if shard != self.shard and peers.is_up(shard):
                peers.post(shard, protocol.PLACEMENT_PUT, body)

    # -- changes ------------------------------------------------------------------------------

    def _alive(self) -> set[str]:
        peers = self.peers
        return {self.shard} | {shard for shard in self.placement.ring.shards
                               if peers is not None and peers.is_up(shard)}

    def _not_gone(self) -> set[str]:
        """Shards up, or down for less than the grace: a replica's place stays theirs."""
        now = trio.current_time()
        return self._alive() | {shard for shard, since in self._down_since.items()
                                if now - since < self._grace}

    async def promote(self, range_: str) -> RangeState:
        """Make this shard the owner of `range_` (the operator's failover). Refused while
        the owner still answers (with etcd: still holds its lease): two owners must never
        both acknowledge."""
        current = self.placement.state(range_)
        if current.owner == self.shard:
            raise Conflict(f"shard {self.shard!r} already owns range {range_!r}",
                           code="already_owner")
        leased = self.decider.alive()
        if current.owner in (self._alive() if leased is None else leased):
            raise Conflict(f"the owner of range {range_!r}, shard {current.owner!r}, still "
                           "answers; stop it first (or wait for it to be seen down)",
                           code="owner_alive")
        if current.replica != self.shard:
            raise Conflict(f"shard {self.shard!r} is not range {range_!r}'s replica (its "
                           f"replica is {current.replica!r}) and may not hold all of it",
                           code="not_replica")
        if not self._replica.holds(range_):
            raise Conflict(f"shard {self.shard!r} has not got a whole copy of range "
                           f"{range_!r} at epoch {current.epoch} (a copy was under way or "
                           "never made): promoting it could lose acknowledged messages; "
                           "bring the owner back", code="not_caught_up")
        new = await self._take_over(current)
        if new is None:
            raise Conflict(f"range {range_!r} changed meanwhile; look again",
                           code="placement_changed")
        return new

    async def hand_back(self, range_: str, *, within: float = 60.0) -> RangeState:
        """Give `range_` back to its natural owner, which must be up: first make it the
        range's replica (a copy brings it up to date), then, once it holds everything
        this shard acknowledged, make it the owner and this shard its replica. Fenced
        like any change: a shipment still in flight under the old epoch is refused by
        the new owner, so nothing is acknowledged twice."""
        natural = range_
        current = self.placement.state(range_)
        if current.owner != self.shard:
            raise Conflict(f"shard {self.shard!r} does not own range {range_!r} (its owner "
                           f"is {current.owner!r}): ask that shard", code="not_owner")
        if natural == self.shard:
            raise Conflict(f"range {range_!r} is with its natural owner already",
                           code="already_home")
        if natural not in self._candidates():
            raise Conflict(f"shard {natural!r} is not up", code="owner_down")
        with trio.move_on_after(within) as deadline:
            if current.replica != natural:
                await self._move_replica(current, natural)
            while True:
                state = self.placement.state(range_)
                if state.owner != self.shard or state.replica != natural:
                    raise Conflict(f"range {range_!r} changed meanwhile; look again",
                                   code="placement_changed")
                if self._shipper.caught_up(range_):
                    break
                self._wake.set()
                await trio.sleep(0.05)
            new = RangeState(range_, natural, self.shard, state.epoch + 1)
            if not await self.decider.change(state, new):
                raise Conflict(f"range {range_!r} changed meanwhile; look again",
                               code="placement_changed")
        if deadline.cancelled_caught:
            raise Conflict(f"shard {natural!r} did not catch up on range {range_!r} within "
                           f"{within:g} s; try again", code="not_caught_up")
        log.info("range %s: handed back to %s (epoch %d)", range_, natural, new.epoch)
        return new

    async def _take_over(self, current: RangeState) -> RangeState | None:
        replica = self.placement.successor(current.range,
                                           excluding={self.shard, current.owner},
                                           alive=self._candidates())
        new = RangeState(current.range, self.shard, replica, current.epoch + 1)
        if not await self.decider.change(current, new):
            return None
        log.info("range %s: taken over from %s (epoch %d)", current.range, current.owner,
                 new.epoch)
        return new

    def _candidates(self) -> set[str]:
        """Shards a range may be given to: linked to this one, and (with etcd) holding
        their lease."""
        leased = self.decider.alive()
        alive = self._alive()
        return alive if leased is None else alive & (leased | {self.shard})

    async def run(self, *, settle_after: float,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The recovery loop (and, without etcd, settling after `settle_after` seconds
        with no peer to learn the epochs from)."""
        task_status.started()
        if isinstance(self.decider, LocalDecider):
            with trio.move_on_after(settle_after):
                await self.settled.wait()
            if not self.settled.is_set():
                log.info("no peer answered within %.1fs; serving the placement stored here",
                         settle_after)
                self.settled.set()
        await self.settled.wait()
        if not self.placement.replicated:
            return  # every range stays with its natural owner: nothing to recover
        start = trio.current_time()
        for shard in self.placement.ring.shards:
            if shard != self.shard and shard not in self._alive():
                self._down_since.setdefault(shard, start)
        while True:
            self._wake = trio.Event()
            try:
                await self._recover_once()
            except Exception:
                log.exception("placement recovery failed; retrying")
            with trio.move_on_after(0.5):
                await self._wake.wait()

    def wake(self) -> None:
        self._wake.set()

    async def _recover_once(self) -> None:
        leased = self.decider.alive()
        alive = self._candidates()
        # Gone: with etcd, when its lease is gone (a link down is no proof: the shard cut
        # off may be this one); without, unreachable here for longer than the grace.
        not_gone = self._not_gone() if leased is None else leased | {self.shard}
        if leased is not None and self.decider.auto_failover and self.lease_held():
            for state in self.placement.states():
                if state.replica == self.shard and state.owner not in leased \
                        and self._replica.holds(state.range):
                    # The owner's lease is gone: it acknowledges nothing any more, and
                    # this shard holds everything it acknowledged.
                    await self._take_over(state)
        for state in self.placement.states():
            if state.owner != self.shard or not self.placement.replicated:
                continue
            if state.replica is not None and state.replica not in not_gone:
                # The replica is gone: the next shard of the chain backs the range.
                replica = self.placement.successor(
                    state.range, excluding={self.shard, state.replica}, alive=alive)
                if replica is None and leased is None:
                    # Alone, and no etcd to say whether this shard is the one cut off:
                    # acknowledging alone could make a second owner, should the
                    # operator promote the replica. Wait for a peer.
                    continue
                await self._move_replica(state, replica)
            elif state.replica is None:
                replica = self.placement.successor(state.range, excluding={self.shard},
                                                   alive=alive)
                if replica is not None:
                    await self._move_replica(state, replica)
        for state in self._shipper.blocked():
            if state.replica in alive and self.placement.state(state.range) == state:
                try:
                    await self._shipper.copy(state)
                except (Replicated, Unavailable) as exc:
                    log.warning("range %s: copy to %s failed: %s", state.range,
                                state.replica, exc)
                    await trio.sleep(0.2)

    async def _move_replica(self, current: RangeState, replica: str | None) -> None:
        new = RangeState(current.range, self.shard, replica, current.epoch + 1)
        if await self.decider.change(current, new):
            self.replica_moves += 1


class LocalDecider:
    """No etcd: this shard decides for the ranges it owns, and tells its peers. Safe
    against a second owner because an owner acknowledges only what its replica took,
    and a replica refuses an epoch older than the newest it has seen."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    async def change(self, current: RangeState, new: RangeState) -> bool:
        """Take `new` once every other shard it names has accepted it (`placement.claim`):
        of two shards deciding the same range's next epoch apart (an owner moving its
        replica, the operator promoting that replica), the shard both name accepts only
        the first, so the second gives up instead of making a second owner."""
        coordinator = self._coordinator
        if coordinator.placement.state(current.range) != current:
            return False
        for shard in {new.owner, new.replica} - {coordinator.shard, None}:
            assert shard is not None
            if not await coordinator.claim(shard, new):
                return False
        if coordinator.placement.state(current.range) != current:
            return False
        coordinator.adopt(new)
        coordinator.gossip()
        return True

    def lease_held(self) -> bool:
        return True

    def alive(self) -> set[str] | None:
        return None

    @property
    def auto_failover(self) -> bool:
        return False


def _nothing(_batch: Batch) -> None:
    """A command that writes nothing: done once everything queued before it is."""
