from __future__ import annotations

import random

import pytest

from chatd.domain.ring import HashRing


def test_one_shard_owns_everything() -> None:
    ring = HashRing(["solo"])
    assert {ring.shard_for(k) for k in range(1000)} == {"solo"}


def test_keys_spread_over_shards() -> None:
    ring = HashRing(["a", "b", "c", "d"])
    counts: dict[str, int] = {}
    for key in random.Random(1).sample(range(1 << 62), 20_000):
        counts[ring.shard_for(key)] = counts.get(ring.shard_for(key), 0) + 1
    assert set(counts) == {"a", "b", "c", "d"}
    assert max(counts.values()) < 1.5 * min(counts.values())


def test_adding_a_shard_moves_only_its_share() -> None:
    keys = random.Random(2).sample(range(1 << 62), 20_000)
    before = HashRing(["a", "b", "c"])
    after = HashRing(["a", "b", "c", "d"])
    moved = [k for k in keys if before.shard_for(k) != after.shard_for(k)]
    assert all(after.shard_for(k) == "d" for k in moved)
    assert 0.15 < len(moved) / len(keys) < 0.35


def test_ring_is_order_independent_and_signed() -> None:
    assert HashRing(["a", "b"]).signature() == HashRing(["b", "a"]).signature()
    assert HashRing(["a", "b"]).signature() != HashRing(["a", "c"]).signature()
    assert HashRing(["a"], vnodes=8).signature() != HashRing(["a"], vnodes=9).signature()
    k = 123456789
    assert HashRing(["a", "b", "c"]).shard_for(k) == HashRing(["c", "a", "b"]).shard_for(k)


@pytest.mark.parametrize("names", [[], ["a", "a"]])
def test_bad_rings(names: list[str]) -> None:
    with pytest.raises(ValueError):
        HashRing(names)


def test_successors_start_with_the_owner_and_are_distinct() -> None:
    ring = HashRing(["a", "b", "c", "d", "e"])
    for key in random.Random(3).sample(range(1 << 62), 2_000):
        chain = ring.successors(key, 3)
        assert chain[0] == ring.shard_for(key)
        assert len(chain) == len(set(chain)) == 3
        assert ring.successors(key, 1) == chain[:1]
        assert ring.successors(key, 2) == chain[:2]
        assert sorted(ring.successors(key, 5)) == ["a", "b", "c", "d", "e"]


def test_successors_follow_the_owners_chain() -> None:
    # Whole ranges fail over, so a key's replicas are its owner's range's: the shards
    # after the owner in name order, round.
    ring = HashRing(["c", "a", "b"], vnodes=4)
    assert ring.chain("a") == ("a", "b", "c")
    assert ring.chain("b") == ("b", "c", "a")
    assert ring.chain("c") == ("c", "a", "b")
    for key in range(500):
        assert ring.successors(key, 3) == ring.chain(ring.shard_for(key))


def test_successors_are_capped_at_the_shards_there_are() -> None:
    assert HashRing(["solo"]).successors(7, 3) == ("solo",)
    assert len(HashRing(["a", "b"]).successors(7, 9)) == 2
    with pytest.raises(ValueError):
        HashRing(["a"]).successors(7, 0)


#: Computed once with blake2b-64 of the UTF-8 text; a change here moves every handle.
PINNED_HOMES = {"alice": "b", "bob": "a", "carol": "c", "dave": "b", "+14155550123": "a",
                "zoë": "b"}


def test_shard_for_text_is_stable() -> None:
    # Pinned: a handle's home must not move between releases (that is resharding).
    ring = HashRing(["a", "b", "c"])
    homes = {handle: ring.shard_for_text(handle)
             for handle in ("alice", "bob", "carol", "dave", "+14155550123", "zoë")}
    assert homes == PINNED_HOMES
    assert HashRing(["c", "b", "a"]).shard_for_text("alice") == homes["alice"]
    assert HashRing(["solo"]).shard_for_text("alice") == "solo"


def test_text_keys_spread_over_shards() -> None:
    ring = HashRing(["a", "b", "c", "d"])
    counts: dict[str, int] = {}
    for i in range(20_000):
        home = ring.shard_for_text(f"user{i}")
        counts[home] = counts.get(home, 0) + 1
    assert set(counts) == {"a", "b", "c", "d"}
    assert max(counts.values()) < 1.5 * min(counts.values())
