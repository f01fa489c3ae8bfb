"""The replica's side, over a real store and committer: ordered applies, copies that
replace what was held, and refusals of stale owners and of gaps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from chatd.domain.models import Member
from chatd.domain.ring import HashRing
from chatd.errors import BadRequest
from chatd.pending import Pending
from chatd.replication import protocol
from chatd.replication.placement import Placement, RangeState
from chatd.replication.range_records import RangeRecords
from chatd.replication.replica import Replica
from chatd.services.commands import Commands
from chatd.storage import Batch, GroupCommitter, Store, records

RING = HashRing(["a", "b", "c"])
IN_A = [c for c in range(1, 5_000) if RING.shard_for(c) == "a"][:3]
IN_C = next(c for c in range(1, 5_000) if RING.shard_for(c) == "c")


@dataclass
class Backing:
    store: Store
    placement: Placement
    replica: Replica

    async def ask(self, method: str, **body: Any) -> Any:
        answer = self.replica.handle(method, {"range": "a", "epoch": 1, **body})
        if isinstance(answer, Pending):
            return await answer.wait()
        return answer

    def members(self, conversation_id: int) -> list[int]:
        return [user for (_, user), _ in self.store.scan(records.MEMBERS,
                                                         records.u64(conversation_id))]


@pytest.fixture
async def backing(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Backing]:
    store = Store.open(str(tmp_path), sync=False)
    committer = GroupCommitter(store)
    await nursery.start(committer.run)
    placement = Placement(RING, 2)  # range a: owner a, replica b, epoch 1
    ranges = RangeRecords(store, RING)
    replica = Replica(shard="b", placement=placement, store=store,
                      commands=Commands(committer), ranges=ranges,
                      adopt=placement.adopt)
    yield Backing(store, placement, replica)
    committer.close()
    await trio.testing.wait_all_tasks_blocked()
    store.close()


def member_op(conversation_id: int, user_id: int) -> list[Any]:
    batch = Batch()
    batch.put(records.MEMBERS, (conversation_id, user_id), Member("member", 0))
    [(family, key, value)] = batch.operations
    return [family, key, value]


async def copy(backing: Backing, ops: list[list[Any]], *, next_batch: int = 0,
               epoch: int = 1, owner: str = "a") -> None:
    assert await backing.replica.handle(protocol.BEGIN, {"range": "a", "epoch": epoch,
                                                         "owner": owner}).wait() == {"ok": True}
    steps = ((protocol.CHUNK, {"ops": ops}), (protocol.END, {"next_batch": next_batch}))
    for method, body in steps:
        answer = backing.replica.handle(method, {"range": "a", "epoch": epoch, **body})
        result = await answer.wait() if isinstance(answer, Pending) else answer
        assert result == {"ok": True}, result


async def test_a_copy_then_numbered_batches_land_in_order(backing: Backing) -> None:
    await copy(backing, [member_op(IN_A[0], 1)], next_batch=5)
    assert await backing.ask(protocol.APPLY, batch=5, ops=[member_op(IN_A[0], 2)]) == \
        {"ok": True}
    assert await backing.ask(protocol.APPLY, batch=6, ops=[member_op(IN_A[1], 3)]) == \
        {"ok": True}
    assert backing.members(IN_A[0]) == [1, 2] and backing.members(IN_A[1]) == [3]
    assert backing.replica.streaming() == {"a": 7}


async def test_a_gap_or_a_batch_before_any_copy_needs_a_copy(backing: Backing) -> None:
    refused = await backing.ask(protocol.APPLY, batch=0, ops=[member_op(IN_A[0], 1)])
    assert refused["refused"] == "needs_copy"
    await copy(backing, [], next_batch=0)
    gap = await backing.ask(protocol.APPLY, batch=1, ops=[member_op(IN_A[0], 1)])
    assert gap["refused"] == "needs_copy"
    # The stream is over: even the right number is refused until a new copy.
    assert (await backing.ask(protocol.APPLY, batch=0, ops=[]))["refused"] == "needs_copy"
    assert backing.members(IN_A[0]) == []


async def test_a_copy_replaces_what_the_range_held_and_nothing_else(backing: Backing) -> None:
    await copy(backing, [member_op(IN_A[0], 1), member_op(IN_A[2], 9)])
    # Another range's record, written here as its replica or owner, must stay.
    other = Batch()
    other.put(records.MEMBERS, (IN_C, 4), Member("member", 0))
    backing.store.write(other)
    await copy(backing, [member_op(IN_A[1], 2)])
    assert backing.members(IN_A[0]) == [] and backing.members(IN_A[2]) == []
    assert backing.members(IN_A[1]) == [2] and backing.members(IN_C) == [4]


async def test_an_older_epoch_or_another_owner_at_the_same_epoch_is_refused(
        backing: Backing) -> None:
    # A new owner (b's placement learns epoch 2 from the copy itself).
    answer = backing.replica.handle(protocol.BEGIN, {"range": "a", "epoch": 2, "owner": "c"})
    assert await answer.wait() == {"ok": True}
    assert backing.placement.state("a") == RangeState("a", "c", "b", 2)
    for method, body in ((protocol.BEGIN, {"epoch": 1, "owner": "a"}),
                         (protocol.BEGIN, {"epoch": 2, "owner": "a"}),
                         (protocol.APPLY, {"epoch": 1, "batch": 0, "ops": []})):
        refused = backing.replica.handle(method, {"range": "a", **body})
        assert refused["refused"] == "stale_epoch", (method, body)
        assert RangeState.from_wire(refused["state"]).epoch == 2
    assert backing.replica.refused_stale == 3


@pytest.mark.parametrize("body", [
    "not a map", {"range": "a"}, {"range": "zz", "epoch": 1, "owner": "a"},
    {"range": "a", "epoch": 1, "owner": "b"},  # b is this shard: not an owner of its own copy
])
async def test_malformed_begins_are_refused(backing: Backing, body: Any) -> None:
    with pytest.raises(BadRequest):
        backing.replica.handle(protocol.BEGIN, body)


@pytest.mark.parametrize("ops", [
    "x", [["members", b"k"]], [["no_such_family", b"k", b"v"]], [["members", "text", b"v"]],
    [["members", b"k", 5]],
])
async def test_malformed_ops_are_refused_and_nothing_lands(backing: Backing,
                                                           ops: Any) -> None:
    await copy(backing, [])
    with pytest.raises(BadRequest):
        backing.replica.handle(protocol.APPLY, {"range": "a", "epoch": 1, "batch": 0,
                                                "ops": [member_op(IN_A[0], 1), *ops]
                                                if isinstance(ops, list) else ops})
    assert backing.members(IN_A[0]) == []


async def test_a_record_a_copy_changes_is_owed_a_purge_here(backing: Backing) -> None:
    """A message deleted while this replica was away arrives in the next copy as its
    tombstone, overwriting the old record: the old bytes must be purged here too, as
    the owner's delete-and-put makes them there; a record the copy leaves as it was
    costs no purge."""
    await copy(backing, [member_op(IN_A[0], 1), member_op(IN_A[1], 2)])
    backing.store.take_purge()  # (the first copy's own bookkeeping)
    changed = Batch()
    changed.put(records.MEMBERS, (IN_A[0], 1), Member("admin", 0))
    [(family, key, value)] = changed.operations
    await copy(backing, [[family, key, value], member_op(IN_A[1], 2)])
    owed = backing.store.take_purge()
    assert set(owed) == {records.MEMBERS.name}
    assert owed[records.MEMBERS.name] == {records.u64(IN_A[0])}
    assert backing.store.get(records.MEMBERS, (IN_A[0], 1)) == Member("admin", 0)
