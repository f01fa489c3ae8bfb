"""Adversarial review of replication and failover: each test shows a way one of the
guarantees (docs/architecture.md, "Replication and failover") breaks today, over real
services (store, committer, owner, replica, coordinator) and a fake mesh.

Shards a, b, c; range a's chain is [a, b, c]. The shard under test is built with
`build_services` from a 3-shard config with replication.factor 2, and the mesh is a
`FakePeers`: which peers are "up" is set by the test, requests to them never answer
unless the test answers them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from chatd.config import Address, ShardSpec
from chatd.domain.models import Member, Message, SendResult
from chatd.domain.ring import HashRing
from chatd.errors import BadRequest, Conflict, Unavailable
from chatd.pending import Pending
from chatd.protocol import owner as ops
from chatd.replication import protocol
from chatd.replication.placement import RangeState
from chatd.services.context import Services, build_services
from chatd.storage import Batch, Store, records
from tests.helpers import make_config

RING = HashRing(["a", "b", "c"])
IN_A = [c for c in range(1, 20_000) if RING.shard_for(c) == "a"][:4]
SHARDS = tuple(ShardSpec(name, number, Address("127.0.0.1", 1 + number))
               for number, name in enumerate(("a", "b", "c"), start=1))
USER_1, USER_2 = 1001, 1002


@dataclass
class FakePeers:
    up: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, Any, Pending[Any]]] = field(default_factory=list)
    posts: list[tuple[str, str, Any]] = field(default_factory=list)
    #: Peers that take every replica.* request at once.
    answering: set[str] = field(default_factory=set)

    def is_up(self, peer: str) -> bool:
        return peer in self.up or peer in self.answering

    def start_request(self, peer: str, method: str, body: Any, *,
                      timeout: float | None = None) -> Pending[Any]:
        if peer in self.answering:
            return Pending.done({"ok": True})
        pending: Pending[Any] = Pending()
        self.requests.append((peer, method, body, pending))
        return pending

    def post(self, peer: str, method: str, body: Any) -> bool:
        self.posts.append((peer, method, body))
        return True

    def prometheus(self) -> list[str]:
        return []


@dataclass
class Node:
    """One shard's services over a real store, its committer and shipper running."""

    name: str
    data_dir: Path
    nursery: trio.Nursery
    peers: FakePeers = field(default_factory=FakePeers)
    services: Services = field(init=False)
    scope: trio.CancelScope = field(init=False)

    async def start(self) -> None:
        config = make_config(
            self.data_dir,
            cluster={"shard": self.name, "shards": SHARDS, "secret": "s" * 32,
                     "request_timeout": 0.3},
            replication={"factor": 2, "failover_after": 2.0})
        store = Store.open(config.storage.data_dir, sync=False)
        self.services = build_services(config, store)
        self.services.coordinator.peers = self.peers
        self.services.shipper.peers = self.peers
        self.services.coordinator.settled.set()
        self.scope = trio.CancelScope()
        await self.nursery.start(self._run)

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
        with self.scope:
            async with trio.open_nursery() as inner:
                await inner.start(self.services.committer.run)
                await inner.start(self.services.shipper.run)
                task_status.started()

    async def stop(self) -> None:
        self.services.committer.close()
        self.services.shipper.close()
        await trio.testing.wait_all_tasks_blocked()
        self.scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        self.services.store.close()

    def adopt(self, range_: str, owner: str, replica: str | None, epoch: int) -> None:
        assert self.services.coordinator.adopt(RangeState(range_, owner, replica, epoch))

    async def ask(self, method: str, epoch: int, **body: Any) -> Any:
        answer = self.services.coordinator.handle_request(
            "x", method, {"range": "a", "epoch": epoch, **body})
        return await answer.wait() if isinstance(answer, Pending) else answer

    def log(self, conversation_id: int) -> list[Message]:
        return self.services.log.read(conversation_id, after=0, before=1 << 40,
                                      limit=1000, newest_first=False)

    def members(self, conversation_id: int) -> list[int]:
        return [user for (_, user), _ in self.services.store.scan(
            records.MEMBERS, records.u64(conversation_id))]

    def range_chunks(self) -> list[list[list[Any]]]:
        ranges = self.services.shipper._ranges
        return [protocol.wire_ops(chunk) for chunk in ranges.chunks("a", max_bytes=1 << 20)]

    async def send(self, conversation_id: int, text: str, sender: int = USER_1) -> SendResult:
        pending = self.services.owner_api.run(ops.Send(
            conversation_id, sender, 1, text, "text/plain", text))
        return await pending.wait()

    def history(self, conversation_id: int, user: int = USER_1) -> list[Message]:
        page = self.services.owner_api.run(ops.History(conversation_id, user, -1, -1, 100, 0))
        return list(page.messages)


@pytest.fixture
async def node_b(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Node]:
    node = Node("b", tmp_path / "b", nursery)
    await node.start()
    yield node
    await node.stop()


@pytest.fixture
async def node_a(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Node]:
    node = Node("a", tmp_path / "a", nursery)
    await node.start()
    yield node
    await node.stop()


def op(family: str, key: Any, value: Any) -> list[Any]:
    batch = Batch()
    if value is None:
        batch.delete(family, key)
    else:
        batch.put(family, key, value)
    [(name, raw_key, raw_value)] = batch.operations
    return [name, raw_key, raw_value]


def message_ops(conversation_id: int, seq: int, text: str, sender: int = USER_1
                ) -> list[list[Any]]:
    """What an owner's batch holds for one send: the entry and its dedup row."""
    message = Message(9_000_000 + seq, conversation_id, seq, sender, 1, text, "text/plain",
                      text, 1_700_000_000_000 + seq)
    return [op(records.MESSAGES, (conversation_id, seq), message),
            op(records.DEDUP, (conversation_id, sender, text),
               SendResult(message.message_id, conversation_id, seq, message.ts))]


async def group_in_range_a(node: Node, texts: list[str]) -> int:
    """A group of range a, created and written on `node` while it owns range a alone."""
    group = IN_A[0]
    await node.services.owner_api.run(
        ops.CreateGroup(group, USER_1, "g", [USER_2])).wait()
    for text in texts:
        await node.send(group, text)
    return group


async def settle(node: Node) -> None:
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(0.05)


# -- 1. promote / auto takeover of a replica whose copy is under way ---------------------------


async def test_a_replica_in_the_middle_of_a_copy_still_holds_everything(node_b: Node) -> None:
    # b follows range a (owner a, epoch 1): a copy gives it three acknowledged members.
    assert await node_b.ask(protocol.BEGIN, 1, owner="a") == {"ok": True}
    assert await node_b.ask(protocol.CHUNK, 1, ops=[
        op(records.MEMBERS, (IN_A[1], user), Member("member", 0)) for user in (1, 2, 3)]) \
        == {"ok": True}
    assert await node_b.ask(protocol.END, 1, next_batch=0) == {"ok": True}
    assert node_b.members(IN_A[1]) == [1, 2, 3]
    # One apply is late (b stalled for a moment): a breaks the stream and starts a new
    # copy to b. replica.begin drops everything b held of range a...
    assert await node_b.ask(protocol.BEGIN, 1, owner="a") == {"ok": True}
    # ... and a dies before the first chunk. The operator promotes range a's replica,
    # as docs/operations.md says to (a is down, b is the replica). A copy merges into
    # what the replica holds (it never empties it first), so b, copied whole at this
    # epoch before, still holds everything a acknowledged and may take over.
    await node_b.services.coordinator.promote("a")
    assert node_b.members(IN_A[1]) == [1, 2, 3]


async def test_a_replica_whose_first_copy_never_ended_is_not_promoted(node_b: Node) -> None:
    # b becomes range a's replica at epoch 2 (a new pairing) and the copy begins...
    node_b.adopt("a", "a", "b", 2)
    assert await node_b.ask(protocol.BEGIN, 2, owner="a") == {"ok": True}
    assert await node_b.ask(protocol.CHUNK, 2, ops=[
        op(records.MEMBERS, (IN_A[1], 1), Member("member", 0))]) == {"ok": True}
    # ... and a dies before it ends: b may hold only part of the range.
    with pytest.raises(Conflict) as refused:
        await node_b.services.coordinator.promote("a")
    assert refused.value.code == "not_caught_up"


# -- 2. replica.begin lists the deletes before earlier queued writes have landed --------------


async def test_a_copy_replaces_writes_still_queued_when_it_began(node_b: Node) -> None:
    group = IN_A[1]
    assert await node_b.ask(protocol.BEGIN, 1, owner="a") == {"ok": True}
    assert await node_b.ask(protocol.END, 1, next_batch=0) == {"ok": True}
    # Batch 0 of the stream (a send "x": the entry and its dedup row) arrives, and is
    # queued in b's committer; its answer is late at a (b's disk is slow), a gives up on
    # the stream and copies the range again. In a's copy "x" is not there (think of a
    # different owner's log, or a record a deleted since), so the copy must remove it.
    applied = node_b.services.coordinator.handle_request(
        "a", protocol.APPLY, {"range": "a", "epoch": 1, "batch": 0,
                              "ops": message_ops(group, 1, "x")})
    began = node_b.services.coordinator.handle_request(
        "a", protocol.BEGIN, {"range": "a", "epoch": 1, "owner": "a"})
    assert await applied.wait() == {"ok": True}
    assert await began.wait() == {"ok": True}
    assert await node_b.ask(protocol.CHUNK, 1, ops=message_ops(group, 1, "y", USER_2)) \
        == {"ok": True}
    assert await node_b.ask(protocol.END, 1, next_batch=0) == {"ok": True}
    # The copy held only "y" at seq 1: "x"'s dedup row must be gone with it. Today it
    # survives, so once b owns the range, a retry of "x" is answered "seq 1", which is
    # "y": the retried send is acknowledged and lost.
    assert node_b.services.store.get(records.DEDUP, (group, USER_1, "x")) is None


# -- 3. a new owner loads a conversation before the applies queued ahead of it land -----------


async def test_a_new_owner_does_not_reuse_a_seq_still_queued_from_the_old_owner(
        node_b: Node) -> None:
    # b once owned range a alone (epoch 2) and wrote three messages...
    node_b.adopt("a", "b", None, 2)
    await settle(node_b)  # the hand-over barrier
    group = await group_in_range_a(node_b, ["m1", "m2"])  # seqs 1 (created), 2, 3
    snapshot = node_b.range_chunks()
    # ... then c took range a over (epoch 3) with b as its replica (the copy).
    node_b.adopt("a", "c", "b", 3)
    assert await node_b.ask(protocol.BEGIN, 3, owner="c") == {"ok": True}
    for chunk in snapshot:
        assert await node_b.ask(protocol.CHUNK, 3, ops=chunk) == {"ok": True}
    assert await node_b.ask(protocol.END, 3, next_batch=0) == {"ok": True}
    # c ships batch 0 (send "x", seq 4); it is queued in b's committer when b takes
    # range a over (c's lease ran out / the operator promoted b / a hand-back).
    applied = node_b.services.coordinator.handle_request(
        "c", protocol.APPLY, {"range": "a", "epoch": 3, "batch": 0,
                              "ops": message_ops(group, 4, "x")})
    node_b.adopt("a", "b", None, 4)
    # Until what was queued before the take-over is on disk, the range is not served.
    with pytest.raises(Unavailable):
        node_b.services.owner_api.run(ops.Send(group, USER_2, 1, "y", "text/plain", "y"))
    assert await applied.wait() == {"ok": True}
    await settle(node_b)
    sent = node_b.services.owner_api.run(ops.Send(group, USER_2, 1, "y", "text/plain", "y"))
    result = await sent.wait()
    log = node_b.log(group)
    by_seq = {message.seq: message.client_msg_id for message in log}
    # x was replicated at seq 4 (and c's client may retry it): y must come after it.
    assert by_seq.get(4) == "x", by_seq
    assert result.seq == 5, result


# -- 4. without etcd, an owner cut off from every peer acknowledges alone ---------------------


async def test_an_isolated_owner_without_etcd_acknowledges_nothing(node_a: Node) -> None:
    # a owns range a (epoch 1, replica b) and is cut off from b and c: every link down.
    coordinator = node_a.services.coordinator
    for peer in ("b", "c"):
        coordinator.peer_down(peer)
    coordinator._down_since = {peer: trio.current_time() - 10
                               for peer in ("b", "c")}
    await coordinator._recover_once()  # what its loop does after the grace
    state = coordinator.placement.state("a")
    print("a's view of range a after the grace:", state)
    # Meanwhile the operator, seeing a down from b, promotes b: (b, c, epoch 2) on b's
    # side. a now holds (a, None, 2): two owners at epoch 2, and neither ever adopts the
    # other's state (adopt wants a higher epoch). a must not acknowledge alone:
    with pytest.raises(Unavailable):
        await node_a.services.owner_api.run(
            ops.CreateGroup(IN_A[0], USER_1, "g", [USER_2])).wait()


# -- 5. a restarted owner shows entries its replica never got ---------------------------------


async def test_a_restarted_owner_shows_nothing_its_replica_does_not_hold(
        node_a: Node) -> None:
    # a owns range a, replicated to b (epoch 1), and b does not answer: nothing is
    # acknowledged, the messages are only on a's disk.
    node_a.adopt("a", "a", None, 2)
    group = await group_in_range_a(node_a, ["acked"])  # seqs 1, 2: acknowledged alone
    node_a.adopt("a", "a", "b", 3)
    node_a.peers.up = {"b"}
    with pytest.raises(Unavailable):
        await node_a.send(group, "never-acked")
    # Refused (the range waits for its first copy to b) or capped at the acknowledged.
    try:
        assert [m.seq for m in node_a.history(group)] == [1, 2]
    except Unavailable as refused:
        assert refused.code == "not_owner"
    # a is killed and restarts (same disk, same placement): before any copy, reads show
    # seq 3, which b (the replica a failover would promote) has never seen.
    await node_a.stop()
    await node_a.start()
    # Safe either way: refused until the replica has a whole copy, or capped at what it
    # acknowledged.
    try:
        assert [m.seq for m in node_a.history(group)] == [1, 2]
    except Unavailable as refused:
        assert refused.code == "not_owner"


# -- 6. what a peer may put in a placement -----------------------------------------------------


async def test_a_placement_naming_no_shard_of_the_ring_is_refused(node_b: Node) -> None:
    bad = [{"range": "a", "owner": "nobody", "replica": "nobody", "epoch": 2**62}]
    node_b.services.coordinator.handle_post("c", protocol.PLACEMENT_PUT, {"states": bad})
    assert node_b.services.coordinator.placement.state("a").owner in RING.shards



# -- 7. a replica moved in is a failover candidate before it holds anything --------------------


async def test_a_replica_that_was_never_copied_is_not_promoted(tmp_path: Path,
                                                               nursery: trio.Nursery) -> None:
    node_c = Node("c", tmp_path / "c", nursery)
    await node_c.start()
    try:
        # a (range a's owner) lost sight of b for the grace and moved its replica place
        # to c: epoch 2, told to c by gossip. The copy to c has not begun when a dies.
        node_c.services.coordinator.adopt_all([RangeState("a", "a", "c", 2)])
        with pytest.raises(Conflict):
            await node_c.services.coordinator.promote("a")
    finally:
        await node_c.stop()


# -- 8. replica.begin reads the whole range into memory, in the event loop ---------------------


async def test_a_copy_begins_without_reading_the_whole_range_at_once(node_b: Node) -> None:
    store = node_b.services.store
    body = "z" * 4000
    for first in range(0, 6000, 500):
        batch = Batch()
        for seq in range(first + 1, first + 501):
            batch.put(records.MESSAGES, (IN_A[1], seq), Message(
                seq, IN_A[1], seq, USER_1, 1, "", "text/plain", body, seq))
        store.write(batch)
    ranges = node_b.services.shipper._ranges
    read = ranges.chunks
    sizes: list[int] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        for chunk in read(*args, **kwargs):
            sizes.append(sum(len(key) + len(value or b"") for _, key, value in chunk))
            yield chunk

    ranges.chunks = recording  # type: ignore[method-assign]
    started = time.perf_counter()
    began = node_b.services.coordinator.handle_request(
        "a", protocol.BEGIN, {"range": "a", "epoch": 1, "owner": "a"})
    blocked = time.perf_counter() - started
    assert await began.wait() == {"ok": True}
    print(f"replica.begin read {sum(sizes) / 1e6:.1f} MB in {len(sizes)} chunk(s), "
          f"holding the event loop {blocked:.3f}s")
    assert not sizes or max(sizes) <= 4 * protocol.CHUNK_BYTES



async def test_a_reload_shows_nothing_that_awaits_its_replica(node_a: Node) -> None:
    node_a.adopt("a", "a", None, 2)
    group = await group_in_range_a(node_a, [])  # seq 1, acknowledged alone
    node_a.adopt("a", "a", "b", 3)  # b backs range a now
    node_a.peers.answering = {"b"}
    await node_a.services.shipper.copy(RangeState("a", "a", "b", 3))
    node_a.peers.answering = set()  # b stalls: what follows waits for it
    pending = node_a.services.owner_api.run(
        ops.Send(group, USER_1, 1, "pending", "text/plain", "pending"))

    await trio.sleep(0.01)  # its batch is written; it waits for b

    def bug(batch: Batch) -> None:
        raise RuntimeError("a command that fails halfway (a bug)")

    node_a.services.committer.enqueue(bug)  # the next batch: doubtful
    await settle(node_a)
    shown = [m.seq for m in node_a.history(group)]
    # The mesh's deadline passes: the shipment to b fails (as a real link's would).
    for _, _, _, request in node_a.peers.requests:
        if not request.finished:
            request.set_error(Unavailable("no answer", code="peer_timeout"))
    with pytest.raises(Unavailable):
        await pending.wait()  # never acknowledged: b never got it
    assert shown == [1], shown


# -- 10. one blocked range holds back every other range's acknowledgements --------------------


async def test_a_blocked_range_does_not_delay_another_ranges_sends(node_a: Node) -> None:
    in_c = next(c for c in range(1, 20_000) if RING.shard_for(c) == "c")
    node_a.adopt("a", "a", None, 2)
    group_a = await group_in_range_a(node_a, [])
    node_a.adopt("c", "a", None, 2)  # a acts for range c too (c is down)...
    await settle(node_a)  # (the take-over barrier)
    await node_a.services.owner_api.run(ops.CreateGroup(in_c, USER_1, "g", [USER_2])).wait()
    # ... replicated to b, which answers at once; range a's replica c is silent.
    node_a.peers.answering = {"b"}
    node_a.adopt("c", "a", "b", 3)
    await node_a.services.shipper.copy(RangeState("c", "a", "b", 3))
    node_a.adopt("a", "a", "c", 3)
    node_a.peers.answering = {"b", "c"}
    await node_a.services.shipper.copy(RangeState("a", "a", "c", 3))
    node_a.peers.answering = {"b"}  # range a's replica c goes silent
    assert node_a.services.shipper.caught_up("c")
    blocked = node_a.services.owner_api.run(
        ops.Send(group_a, USER_1, 1, "to-a", "text/plain", "to-a"))
    await trio.sleep(0.01)
    started = trio.current_time()
    await node_a.send(in_c, "to-c")  # b has it at once
    took = trio.current_time() - started
    for _, _, _, request in node_a.peers.requests:  # the mesh's deadline for c passes
        if not request.finished:
            request.set_error(Unavailable("no answer", code="peer_timeout"))
    with pytest.raises(Unavailable):
        await blocked.wait()
    print(f"a send to range c took {took:.3f}s behind range a's blocked batch")
    assert took < 0.1, took


# -- a peer's malformed placement messages ------------------------------------------------------


@pytest.mark.parametrize("body", [
    "not a map", {"range": "a"}, {"range": "a", "owner": "b", "replica": None, "epoch": 0},
    {"range": "a", "owner": 7, "replica": None, "epoch": 2},
])
async def test_a_malformed_claim_is_refused_and_changes_nothing(node_b: Node, body: Any) -> None:
    before = node_b.services.coordinator.placement.states()
    with pytest.raises(BadRequest):
        node_b.services.coordinator.handle_request("c", protocol.PLACEMENT_CLAIM, body)
    assert node_b.services.coordinator.placement.states() == before


async def test_a_claim_for_an_older_or_rival_state_is_refused_with_what_is_known(
        node_b: Node) -> None:
    coordinator = node_b.services.coordinator
    ok = coordinator.handle_request("c", protocol.PLACEMENT_CLAIM,
                                    {"range": "a", "owner": "c", "replica": "b", "epoch": 2})
    assert ok == {"ok": True} and coordinator.placement.state("a").owner == "c"
    rival = coordinator.handle_request("a", protocol.PLACEMENT_CLAIM,
                                       {"range": "a", "owner": "a", "replica": "b", "epoch": 2})
    assert rival["refused"] == "stale_epoch" and rival["state"]["owner"] == "c"
    # Gossip of a malformed placement is dropped, not adopted.
    coordinator.handle_post("a", protocol.PLACEMENT_PUT, {"states": [{"range": "a"}]})
    coordinator.handle_post("a", protocol.PLACEMENT_PUT, "x")
    assert coordinator.placement.state("a") == RangeState("a", "c", "b", 2)
