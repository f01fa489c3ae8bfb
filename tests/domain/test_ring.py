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
