from __future__ import annotations

import pytest

from chatd.domain.ring import HashRing
from chatd.replication.placement import Placement, RangeState

RING = HashRing(["a", "b", "c"])


def test_epoch_one_is_each_natural_owner_replicated_to_the_next_shard() -> None:
    placement = Placement(RING, 2)
    assert [(s.range, s.owner, s.replica, s.epoch) for s in placement.states()] == [
        ("a", "a", "b", 1), ("b", "b", "c", 1), ("c", "c", "a", 1)]
    assert [s.replica for s in Placement(RING, 1).states()] == [None, None, None]
    # One shard has nobody to replicate to, whatever is asked.
    assert Placement(HashRing(["solo"]), 2).factor == 1


def test_only_a_newer_epoch_replaces_a_state() -> None:
    placement = Placement(RING, 2)
    assert not placement.adopt(RangeState("a", "b", "c", 1))
    assert placement.state("a").owner == "a"
    assert placement.adopt(RangeState("a", "b", "c", 2))
    assert not placement.adopt(RangeState("a", "a", "b", 2))
    assert placement.state("a") == RangeState("a", "b", "c", 2)
    assert not placement.adopt(RangeState("zz", "a", None, 9))  # not a range of this ring


def test_conversations_follow_their_range_to_its_acting_owner() -> None:
    placement = Placement(RING, 2)
    in_a = next(c for c in range(1, 10_000) if RING.shard_for(c) == "a")
    assert placement.owner_of(in_a) == "a"
    placement.adopt(RangeState("a", "b", "c", 2))
    assert placement.owner_of(in_a) == "b"
    assert placement.range_of(in_a) == "a"


def test_a_failed_members_place_goes_along_the_chain() -> None:
    placement = Placement(RING, 2)
    assert placement.successor("a", excluding={"a", "b"}, alive={"a", "b", "c"}) == "c"
    assert placement.successor("a", excluding={"a"}, alive={"a", "c"}) == "c"
    assert placement.successor("a", excluding={"a"}, alive={"a"}) is None


def test_states_round_trip_and_malformed_ones_are_refused() -> None:
    placement = Placement(RING, 2)
    assert Placement.from_wire(placement.to_wire()) == placement.states()
    for bad in ({"range": "a", "owner": "a", "replica": None, "epoch": 0},
                {"range": "a", "owner": 1, "replica": None, "epoch": 1},
                {"range": "a", "owner": "a", "replica": None, "epoch": True}, "x"):
        with pytest.raises(ValueError):
            RangeState.from_wire(bad)
    with pytest.raises(ValueError):
        Placement.from_wire({"a": 1})
    with pytest.raises(ValueError):
        Placement(RING, 3)
