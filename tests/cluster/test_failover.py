"""Replication with etcd: automatic failover, fencing by lease, and etcd's own outages.

Shards a, b, c with replication.factor 2 and a real etcd (tests/etcd.py). Range a's chain
is [a, b, c]: owner a, replica b.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from chatd.client import ApiError
from tests.cluster.harness import Cluster, eventually, group_owned_by, history, open_cluster
from tests.cluster.test_replication import ranges, send_until_acked
from tests.etcd import EtcdServer

FAILOVER_AFTER = 2.0


@pytest.fixture
async def cluster(nursery: trio.Nursery, tmp_path: Path,
                  etcd_server: EtcdServer) -> AsyncIterator[Cluster]:
    settings = {"factor": 2, "failover_after": FAILOVER_AFTER, "auto_failover": True,
                "etcd": [etcd_server.url]}
    async with open_cluster(tmp_path, nursery, replication=settings) as running:
        yield running


async def all_acking(cluster: Cluster) -> bool:
    views = {shard: await ranges(cluster, shard) for shard in ("a", "b", "c")}
    return all(views[name][name].get("acking") for name in ("a", "b", "c"))


async def test_a_killed_owner_is_replaced_by_its_replica_within_the_lease(
        cluster: Cluster) -> None:
    await eventually(lambda: all_acking(cluster), within=15, what="every range acking")
    alice, bob = await cluster.people(["b", "c"])
    alice_b = await cluster.client("b", alice)
    group = await group_owned_by(alice_b, "a", [bob.user_id])
    acked = {f"m{n}": (await send_until_acked(alice_b, group, f"m{n}"))["seq"]
             for n in range(20)}

    cluster["a"].kill()
    killed = trio.current_time()
    sent = await send_until_acked(alice_b, group, "after-the-kill", within=FAILOVER_AFTER + 10)
    available_after = trio.current_time() - killed
    print(f"range a accepted sends again {available_after:.2f}s after its owner was killed")
    assert available_after <= FAILOVER_AFTER + 2 + 1.5, available_after  # +1.5: a loaded box
    view = await ranges(cluster, "c")
    assert (view["a"]["owner"], view["a"]["replica"], view["a"]["epoch"]) == ("b", "c", 2)

    log = await history(alice_b, group)
    seq_of = {m["client_msg_id"]: m["seq"] for m in log if m.get("client_msg_id")}
    assert {key: seq_of[key] for key in acked} == acked
    assert seq_of["after-the-kill"] == sent["seq"]
    assert [m["seq"] for m in log] == list(range(1, len(log) + 1))

    # a comes back: it learns from etcd that b owns its range before it serves.
    await cluster.restart("a")

    async def a_knows() -> bool:
        return (await ranges(cluster, "a"))["a"]["owner"] == "b"

    await eventually(a_knows, within=10, what="a to learn that b owns range a")
    alice_a = await cluster.client("a", alice)
    assert await history(alice_a, group) == await history(alice_b, group)


async def test_without_etcd_owners_stop_acknowledging_until_it_is_back(
        cluster: Cluster, etcd_server: EtcdServer) -> None:
    await eventually(lambda: all_acking(cluster), within=15, what="every range acking")
    alice, bob = await cluster.people(["b", "c"])
    alice_b = await cluster.client("b", alice)
    group = await group_owned_by(alice_b, "a", [bob.user_id])
    await send_until_acked(alice_b, group, "before")
    etcd_server.stop()

    async def refused() -> bool:
        try:
            await alice_b.send(group, "probe")
        except ApiError as exc:
            return exc.status == 503
        return False

    # Within the lease's TTL every owner stops acknowledging: its lease may be gone.
    await eventually(refused, within=FAILOVER_AFTER + 3, what="sends refused without etcd")
    await etcd_server.start()
    sent = await send_until_acked(alice_b, group, "after", within=20)
    log = await history(alice_b, group)
    assert [m["seq"] for m in log] == list(range(1, len(log) + 1))
    assert sent["seq"] == log[-1]["seq"]
    # Nobody failed over: the owners were all alive; only etcd was gone.
    view = await ranges(cluster, "b")
    assert view["a"]["owner"] == "a"
