from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatd.config import ConfigError
from chatd.domain.ring import HashRing
from chatd.storage import Batch, Store, claim_ring, records
from chatd.storage.errors import RingMismatch
from chatd.storage.meta import RING

THREE = HashRing(["a", "b", "c"])
TWO = HashRing(["a", "b"])


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[Store]:
    store = Store.open(str(data_dir))
    try:
        yield store
    finally:
        store.close()


def claim(store: Store, ring: HashRing, shard: str) -> None:
    claim_ring(store, ring.signature(), shard, shards=ring.shards)


def test_the_first_start_records_the_ring_and_later_ones_accept_it(data_dir: Path) -> None:
    store = Store.open(str(data_dir))
    try:
        claim(store, THREE, "b")
        assert store.get(records.META, RING) == {
            "signature": THREE.signature(), "shard": "b", "shards": ["a", "b", "c"]}
        claim(store, THREE, "b")
    finally:
        store.close()
    store = Store.open(str(data_dir))  # the record is durable
    try:
        claim(store, HashRing(["c", "b", "a"]), "b")  # the same ring, listed in another order
    finally:
        store.close()


def test_another_ring_is_refused_naming_both_and_the_procedure(store: Store) -> None:
    claim(store, THREE, "a")
    with pytest.raises(RingMismatch) as raised:
        claim(store, TWO, "a")
    message = str(raised.value)
    assert message.startswith("cluster.shards: this data directory was made under another ring")
    assert f"shards a, b, c; signature {THREE.signature()}" in message
    assert f"shards a, b; signature {TWO.signature()}" in message
    assert 'docs/deploy.md, section "Resharding"' in message
    assert isinstance(raised.value, ConfigError)  # the CLI prints it and exits 2
    # The record is left as it was: fixing the config is enough.
    claim(store, THREE, "a")


def test_other_vnodes_are_another_ring(store: Store) -> None:
    claim(store, HashRing(["a", "b"], vnodes=128), "a")
    with pytest.raises(RingMismatch, match=r"cluster\.vnodes"):
        claim(store, HashRing(["a", "b"], vnodes=64), "a")


def test_another_shard_name_is_refused(store: Store) -> None:
    claim(store, THREE, "a")
    with pytest.raises(RingMismatch) as raised:
        claim(store, THREE, "b")
    message = str(raised.value)
    assert message.startswith("cluster.shard: this data directory belongs to shard 'a', not 'b'")
    assert "--shard a" in message and "Resharding" in message


def test_a_database_from_before_the_record_gets_it(store: Store) -> None:
    # A single shard's data written before ring records existed: no meta record at all.
    batch = Batch()
    batch.put(records.LAST_SEEN, 1, 12345)
    store.write(batch)
    assert store.get(records.META, RING) is None
    local = HashRing(["local"])
    claim(store, local, "local")
    assert store.get(records.META, RING)["signature"] == local.signature()


def test_an_unreadable_record_is_refused(store: Store) -> None:
    batch = Batch()
    batch.put(records.META, RING, ["not", "a", "map"])
    store.write(batch)
    with pytest.raises(RingMismatch, match="ring record is unreadable"):
        claim(store, THREE, "a")
