"""Replication without etcd (replication.factor 2): acknowledged sends survive their
owner's loss, a dead replica is replaced, an operator's failover is fenced.

Ranges and chains with shards a, b, c: range a is [a, b, c] (owner a, replica b), range b
is [b, c, a], range c is [c, a, b]. c sits behind the harness's proxy, so cutting the
proxy isolates c from a and b.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from chatd.client import ApiError, ChatClient
from tests.cluster.harness import (
    ADMIN_TOKEN,
    Cluster,
    eventually,
    group_owned_by,
    history,
    open_cluster,
    owner_of,
)

REPLICATED = {"factor": 2, "failover_after": 2.0}


@pytest.fixture
async def cluster(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path, nursery, replication=REPLICATED) as running:
        yield running


async def admin(cluster: Cluster, shard: str, method: str, path: str,
                body: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=cluster[shard].url, timeout=10,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        return await http.request(method, path, json=body)


async def chatd_admin(cluster: Cluster, shard: str, *args: str
                      ) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(partial(
        subprocess.run, [sys.executable, "-m", "chatd", "admin", *args, "--url",
                         cluster[shard].url], capture_output=True, text=True, timeout=60,
        env={**os.environ, "CHATD_ADMIN_TOKEN": ADMIN_TOKEN}))


async def ranges(cluster: Cluster, shard: str) -> dict[str, dict[str, Any]]:
    response = await admin(cluster, shard, "GET", "/admin/ranges")
    response.raise_for_status()
    return {entry["range"]: entry for entry in response.json()["ranges"]}


async def send_until_acked(client: ChatClient, group: str, text: str, *,
                           within: float = 20.0) -> dict[str, Any]:
    """Send with a fixed client_msg_id, retrying 503s, until acknowledged."""
    with trio.fail_after(within):
        while True:
            try:
                return await client.send(group, text, client_msg_id=text)
            except ApiError as exc:
                assert exc.status == 503, exc
                await trio.sleep(0.2)


async def test_every_shard_sees_the_same_placement_and_streams(cluster: Cluster) -> None:
    async def streaming() -> bool:
        views = {shard: await ranges(cluster, shard) for shard in ("a", "b", "c")}
        return all(view[name]["owner"] == name and view[name]["epoch"] == 1
                   for view in views.values() for name in ("a", "b", "c")) and all(
            views[name][name].get("acking") for name in ("a", "b", "c"))

    await eventually(streaming, within=15, what="every range streaming at epoch 1")
    view = await ranges(cluster, "a")
    assert {name: view[name]["replica"] for name in view} == {"a": "b", "b": "c", "c": "a"}
    metrics = (await admin(cluster, "a", "GET", "/metrics")).text
    assert 'chatd_replication_epoch{range="a",owner="a",replica="b"} 1' in metrics


async def test_an_acknowledged_send_survives_its_owner_and_the_operator_fails_over(
        cluster: Cluster) -> None:
    """Acknowledged sends to a group owned by a are on its replica b: with a killed,
    promoting b (refused while a answered) serves every one of them, at its seq, and
    takes new sends; the restarted a learns it lost the range and routes to b."""
    alice, bob = await cluster.people(["b", "c"])
    alice_b = await cluster.client("b", alice)
    group = await group_owned_by(alice_b, "a", [bob.user_id])
    acked = {}
    for n in range(30):
        sent = await send_until_acked(alice_b, group, f"m{n}")
        acked[f"m{n}"] = sent["seq"]

    refused = await admin(cluster, "b", "POST", "/admin/promote", {"range": "a"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "owner_alive"
    wrong = await admin(cluster, "c", "POST", "/admin/promote", {"range": "zz"})
    assert wrong.status_code == 400

    cluster["a"].kill()
    with pytest.raises(ApiError) as down:
        await alice_b.send(group, "while down")
    assert down.value.status == 503

    async def promoted() -> bool:
        response = await admin(cluster, "b", "POST", "/admin/promote", {"range": "a"})
        return response.status_code == 200

    await eventually(promoted, within=10, what="b to accept the promotion")
    view = await ranges(cluster, "c")
    assert (view["a"]["owner"], view["a"]["epoch"]) == ("b", 2)

    after = await send_until_acked(alice_b, group, "after-failover")
    log = await history(alice_b, group)
    seq_of = {m["client_msg_id"]: m["seq"] for m in log if m.get("client_msg_id")}
    for client_msg_id, seq in acked.items():
        assert seq_of[client_msg_id] == seq, client_msg_id
    assert seq_of["after-failover"] == after["seq"]
    assert [m["seq"] for m in log] == list(range(1, len(log) + 1))
    # A retry of an acknowledged send gets its original answer from the new owner.
    assert (await alice_b.send(group, "m3", client_msg_id="m3"))["seq"] == acked["m3"]

    await cluster.restart("a")
    alice_a = await cluster.client("a", alice)

    async def a_knows() -> bool:
        return (await ranges(cluster, "a"))["a"]["owner"] == "b"

    await eventually(a_knows, within=10, what="a to learn that b owns range a")
    log_via_a = await history(alice_a, group)
    assert log_via_a == log + [m for m in log_via_a[len(log):]]
    sent = await send_until_acked(alice_a, group, "through-the-old-owner")
    assert sent["seq"] == len(log) + 1

    # The operator hands range a back: a becomes b's replica (a copy), then owner again.
    rebalanced = await admin(cluster, "b", "POST", "/admin/rebalance")
    assert rebalanced.status_code == 200, rebalanced.text
    assert [state["range"] for state in rebalanced.json()["moved"]] == ["a"]

    async def home_again() -> bool:
        views = [await ranges(cluster, shard) for shard in ("a", "b", "c")]
        return all((view["a"]["owner"], view["a"]["replica"], view["a"]["epoch"])
                   == ("a", "b", 4) for view in views) and views[0]["a"].get("acking")

    await eventually(home_again, within=20, what="range a back with a, replicated to b")
    final = await send_until_acked(alice_a, group, "home-again")
    assert final["seq"] == sent["seq"] + 1
    log = await history(alice_b, group)
    assert [m["seq"] for m in log] == list(range(1, len(log) + 1))


async def test_a_dead_replica_is_replaced_and_sends_resume(cluster: Cluster) -> None:
    """b (range a's replica) dies: a's sends are not acknowledged until, after the
    grace, c backs range a under epoch 2, with everything copied."""
    alice, bob = await cluster.people(["a", "c"])
    alice_a = await cluster.client("a", alice)
    group = await group_owned_by(alice_a, "a", [bob.user_id])
    first = await send_until_acked(alice_a, group, "before")
    cluster["b"].kill()
    started = trio.current_time()
    second = await send_until_acked(alice_a, group, "after")
    took = trio.current_time() - started
    assert second["seq"] == first["seq"] + 1
    assert took < REPLICATED["failover_after"] + 10, took
    view = await ranges(cluster, "a")
    assert (view["a"]["replica"], view["a"]["epoch"]) == ("c", 2)
    assert view["a"]["acking"] is True
    # c holds the whole range now: kill a and promote c, as an operator would.
    cluster["a"].kill()

    async def promoted() -> bool:
        done = await chatd_admin(cluster, "c", "promote", "--range-of", "a")
        return done.returncode == 0

    await eventually(promoted, within=10, what="c to accept the promotion")
    status = await chatd_admin(cluster, "c", "status")
    assert status.returncode == 0, status.stderr
    [row] = [line for line in status.stdout.splitlines() if line.startswith("a ")]
    # Range a: owner c, and no replica (b is dead too): acknowledged alone, for now.
    assert row.split()[1:4] == ["3", "c", "-"] and "owner, acknowledging" in row, row
    refused = await chatd_admin(cluster, "c", "promote", "--range-of", "a")
    assert refused.returncode == 1 and "already_owner" in refused.stderr
    bob_c = await cluster.client("c", bob)
    log = await history(bob_c, group)
    assert [m["client_msg_id"] for m in log if m.get("client_msg_id")] == ["before", "after"]


async def test_a_partitioned_owner_acknowledges_nothing_after_its_replica_moved_on(
        cluster: Cluster) -> None:
    """c (owner of range c, replicated to a) is cut off. It cannot get anything
    acknowledged; a is promoted for range c; after the partition heals, c has learnt
    epoch 2 and the log has no seq twice."""
    alice, bob = await cluster.people(["a", "b"])
    alice_a = await cluster.client("a", alice)
    group = await group_owned_by(alice_a, "c", [bob.user_id])
    await send_until_acked(alice_a, group, "before")
    # A client on c itself, whose home (a) is across the cut: it authenticates nothing,
    # so talk to c as a user homed on c.
    carol = await cluster.person(home="c")
    carol_c = await cluster.client("c", carol)
    mine = await carol_c.create_group("mine", [alice.user_id])
    assert owner_of(mine["conversation_id"]) in ("a", "b", "c")
    await cluster.proxy.stop()
    await cluster.wait_links({"a": {"c": False}, "b": {"c": False}})
    if owner_of(mine["conversation_id"]) == "c":
        with pytest.raises(ApiError) as refused:
            await carol_c.send(mine["conversation_id"], "alone")
        assert refused.value.status == 503

    async def promoted() -> bool:
        return (await admin(cluster, "a", "POST", "/admin/promote",
                            {"range": "c"})).status_code == 200

    await eventually(promoted, within=15, what="a to accept the promotion of range c")
    await send_until_acked(alice_a, group, "after")
    await cluster.proxy.start()

    async def c_knows() -> bool:
        return (await ranges(cluster, "c"))["c"]["owner"] == "a"

    await eventually(c_knows, within=15, what="c to learn it lost range c")
    log = await history(alice_a, group)
    assert [m["seq"] for m in log] == list(range(1, len(log) + 1))
    assert [m["client_msg_id"] for m in log if m.get("client_msg_id")] == ["before", "after"]
