"""Deleted bytes leave every disk of a replicated range: the owner's and the replica's.
A marker sent into a group is found under both shards' data directories, and under none
of the three after delete-for-everyone and `POST /admin/compact` on each shard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.cluster.harness import ADMIN_TOKEN, Cluster, group_owned_by, open_cluster
from tests.helpers import disk_marker

REPLICATED = {"factor": 2, "failover_after": 2.0}


@pytest.fixture
async def cluster(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path, nursery, replication=REPLICATED) as running:
        yield running


def holding(cluster: Cluster, marker: str) -> dict[str, list[str]]:
    """Per shard, the files under its data directory whose bytes contain `marker`."""
    needle = marker.encode()
    found: dict[str, list[str]] = {}
    for name in "abc":
        root = cluster[name].data_dir
        files = sorted(str(path.relative_to(root)) for path in root.rglob("*")
                       if path.is_file() and needle in path.read_bytes())
        if files:
            found[name] = files
    return found


async def compact_everywhere(cluster: Cluster) -> None:
    for name in "abc":
        async with httpx.AsyncClient(base_url=cluster[name].url, timeout=60, headers={
                "Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
            response = await http.post("/admin/compact")
        assert response.status_code == 204, response.text


async def test_a_deleted_message_leaves_the_owner_and_the_replica(cluster: Cluster) -> None:
    alice = await cluster.person(home="a")
    bob = await cluster.person(home="c")
    as_alice = await cluster.client("a", alice)
    # Range b: owned by b, replicated to c.
    group = await group_owned_by(as_alice, "b", [bob.user_id])
    marker = disk_marker()
    seq = (await as_alice.send(group, f"secret {marker}"))["seq"]
    await as_alice.send(group, "a neighbour that stays")
    # The scan can fail: acknowledged means durable on the owner and on its replica.
    before = holding(cluster, marker)
    assert {"b", "c"} <= set(before), before

    await as_alice.request("POST", f"/messages/{group}/{seq}/delete", {"for": "everyone"})
    await compact_everywhere(cluster)
    assert holding(cluster, marker) == {}
    assert {"b", "c"} <= set(holding(cluster, "a neighbour that stays"))
