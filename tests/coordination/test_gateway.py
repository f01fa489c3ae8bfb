"""The gateway's endpoint rules against a real three-member etcd cluster: a member that
dies is passed over by calls, watches and the lease keeper alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from chatd.coordination import CoordinationError, EtcdClient, LeaseKeeper, WatchEvent
from tests.etcd import EtcdCluster

pytestmark = pytest.mark.slow


@pytest.fixture
async def cluster(etcd_binary: str, tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    running = EtcdCluster(tmp_path, etcd_binary)
    try:
        await running.start()
        yield running
    finally:
        running.close()


async def test_a_dead_leader_is_passed_over_by_calls_watches_and_leases(
        cluster: EtcdCluster) -> None:
    leader = await cluster.leader()
    # The leader first: every call goes to it until it dies.
    endpoints = [leader.url] + [url for url in cluster.urls if url != leader.url]
    async with EtcdClient(endpoints, timeout=1.0) as etcd, trio.open_nursery() as tasks:
        lost: list[None] = []
        # A TTL with room for an election (about a second here) between keepalives.
        keeper = LeaseKeeper(etcd, 10, on_lost=lambda: lost.append(None))
        lease = await tasks.start(keeper.run)
        await etcd.put("owner", b"a", lease=lease)
        _, revision = await etcd.get_prefix("w/")
        seen: list[WatchEvent] = []

        async def watch() -> None:
            async with etcd.watch_prefix("w/", start_revision=revision + 1) as events:
                async for event in events:
                    seen.append(event)

        tasks.start_soon(watch)
        first = await etcd.put("w/1", b"before")
        with trio.fail_after(10):
            while not seen:  # noqa: ASYNC110  # polls the watching task
                await trio.sleep(0.02)

        leader.kill()  # an election follows, and the watch's stream breaks
        with trio.fail_after(20):
            while True:  # a put during the election may be refused as unavailable
                try:
                    second = await etcd.put("w/2", b"after")
                    break
                except CoordinationError:  # "leader changed", a timeout: wait for the election
                    await trio.sleep(0.2)
        assert (await etcd.get("w/1") or pytest.fail("lost")).value == b"before"
        with trio.fail_after(20):
            while len(seen) < 2:  # noqa: ASYNC110  # polls the watching task
                await trio.sleep(0.02)
        assert [(e.kv.key, e.revision) for e in seen] == [("w/1", first), ("w/2", second)]

        await trio.sleep(4)  # keepalives through the surviving members
        assert keeper.held() and keeper.lease_id == lease and not lost
        assert await etcd.get("owner") is not None
        assert (await cluster.leader()) is not leader
        tasks.cancel_scope.cancel()


async def test_a_member_brought_back_catches_up_and_serves_again(cluster: EtcdCluster,
                                                                ) -> None:
    async with EtcdClient(cluster.urls, timeout=1.0) as etcd:
        cluster.members[2].stop()
        await etcd.put("k", b"written while member2 was down")
        await cluster.members[2].start()
    async with EtcdClient([cluster.members[2].url]) as only_member2:
        with trio.fail_after(10):
            while await only_member2.get("k") is None:  # noqa: ASYNC110  # polls etcd
                await trio.sleep(0.1)
