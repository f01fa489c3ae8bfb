"""LeaseKeeper against a real etcd: the lease is kept, `held()` ends before etcd can
expire the lease (the fencing rule), and a lost lease is replaced once etcd answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio

from chatd.coordination import EtcdClient, LeaseKeeper
from tests.cluster.harness import Proxy
from tests.etcd import EtcdServer
from tests.helpers import free_port

#: Every test here waits out keepalives, and most stop, restart or pause etcd.
pytestmark = pytest.mark.slow

TTL = 2  # etcd's minimum with its default election timeout


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient([etcd_server.url], timeout=0.5) as client:
        yield client


class Events:
    """What the keeper's callbacks reported, with the Trio time of each."""

    def __init__(self) -> None:
        self.lost: list[float] = []
        self.regained: list[int] = []

    def on_lost(self) -> None:
        self.lost.append(trio.current_time())

    def on_regained(self, lease: int) -> None:
        self.regained.append(lease)


async def eventually(check: Callable[[], object], within: float = 15.0) -> None:
    with trio.fail_after(within):
        while not check():  # noqa: ASYNC110  # polls what other tasks change
            await trio.sleep(0.02)


async def test_the_lease_is_kept_and_revoked_when_the_keeper_stops(
        etcd: EtcdClient) -> None:
    keeper = LeaseKeeper(etcd, TTL)
    async with trio.open_nursery() as nursery:
        lease = await nursery.start(keeper.run)
        assert keeper.lease_id == lease and keeper.held()
        await etcd.put("owned", b"by me", lease=lease)
        await trio.sleep(2.5 * TTL)  # without keepalives the key would be gone
        assert keeper.held()
        assert await etcd.get("owned") is not None
        statistics = keeper.statistics()
        assert statistics.keepalives_sent >= 5 and statistics.losses == 0
        assert statistics.held_until > trio.current_time()
        nursery.cancel_scope.cancel()
    # Revoked on the way out: whoever takes over need not wait out the TTL.
    assert await etcd.get("owned") is None
    assert await etcd.keepalive(lease) == 0
    assert not keeper.held() and keeper.lease_id is None


async def test_held_ends_before_etcd_can_expire_the_lease(
        etcd: EtcdClient, etcd_server: EtcdServer, nursery: trio.Nursery) -> None:
    # The keeper reaches etcd through a proxy; the test watches etcd directly. Cutting
    # the proxy leaves etcd running, so it expires the lease when its TTL runs out: the
    # keeper must have stopped claiming it before that.
    proxy = Proxy(free_port(), etcd_server.client_port)
    await nursery.start(proxy.run)
    events = Events()
    async with (EtcdClient([f"http://127.0.0.1:{proxy.port}"], timeout=0.5) as cut_off,
                trio.open_nursery() as keeping):
        keeper = LeaseKeeper(cut_off, TTL, on_lost=events.on_lost,
                             on_regained=events.on_regained)
        lease = await keeping.start(keeper.run)
        await etcd.put("owned", b"by the keeper", lease=lease)
        await trio.sleep(1.0)  # a keepalive or two
        await proxy.stop()
        # No keepalive can get through now: the keeper's deadline is final.
        deadline = keeper.statistics().held_until
        with trio.fail_after(15):
            while await etcd.get("owned") is not None:  # noqa: ASYNC110  # polls etcd
                await trio.sleep(0.01)
        expired_at = trio.current_time()  # etcd expired the lease at this time or before
        assert deadline < expired_at
        await eventually(lambda: events.lost)
        assert len(events.lost) == 1 and not keeper.held()
        assert keeper.lease_id is None and keeper.statistics().keepalives_failed >= 1

        await proxy.start()
        await eventually(lambda: events.regained)
        assert events.regained[0] != lease
        assert keeper.lease_id == events.regained[0] and keeper.held()
        assert keeper.statistics().losses == 1
        keeping.cancel_scope.cancel()


async def test_a_renewal_counts_from_when_the_keepalive_was_sent(
        etcd_server: EtcdServer) -> None:
    # A keepalive that is due while etcd is paused is answered only after it resumes;
    # the lease may be trusted from its send, never from its (later) answer.
    ttl = 4  # keepalives every 1.33 s, held until 3.2 s after one is sent
    async with (EtcdClient([etcd_server.url], timeout=3.0) as etcd,
                trio.open_nursery() as keeping):
        keeper = LeaseKeeper(etcd, ttl)
        await keeping.start(keeper.run)
        granted = keeper.statistics().held_until
        await eventually(lambda: keeper.statistics().held_until != granted)  # a renewal
        etcd_server.pause()
        try:
            # The next keepalive falls due within 1.33 s and waits for etcd; the lease
            # outlasts the pause (3.2 s from the last renewal's send).
            await trio.sleep(2.0)
            before = keeper.statistics().held_until
            assert keeper.held()
        finally:
            resumed_at = trio.current_time()
            etcd_server.resume()
        await eventually(lambda: keeper.statistics().held_until != before)
        statistics = keeper.statistics()
        assert statistics.keepalives_failed == 0 and keeper.held()
        # Sent before the resume, so trusted until less than TTL - margin after it; an
        # answer-time rule would give more.
        assert statistics.held_until < resumed_at + ttl - ttl / 5
        keeping.cancel_scope.cancel()


async def test_a_stopped_etcd_loses_the_lease_and_a_restarted_one_gives_it_back(
        etcd: EtcdClient, etcd_server: EtcdServer, nursery: trio.Nursery) -> None:
    events = Events()
    keeper = LeaseKeeper(etcd, TTL, on_lost=events.on_lost, on_regained=events.on_regained)
    old = await nursery.start(keeper.run)
    await trio.sleep(0.5)
    etcd_server.stop()
    stopped_at = trio.current_time()
    # No keepalive can succeed from now on: the deadline is final, and it falls within
    # TTL - margin of a keepalive sent before the stop, so before etcd (had it kept
    # running) could have expired the lease.
    deadline = keeper.statistics().held_until
    assert deadline < stopped_at + TTL - TTL / 5
    await eventually(lambda: not keeper.held())
    await eventually(lambda: events.lost)
    assert keeper.lease_id is None
    await trio.sleep(0.5)  # still down: nothing regained
    assert not events.regained and not keeper.held()

    await etcd_server.start()
    await eventually(lambda: events.regained)
    # etcd brings leases back across a restart with their TTL renewed, and the keys
    # under them: the keeper holds the same lease again (a new one would have meant
    # its keys vanishing, which other shards take for this one's death).
    assert events.regained == [old] and keeper.lease_id == old and keeper.held()
    assert await etcd.keepalive(old) == TTL
    assert events.lost and len(events.lost) == 1
    nursery.cancel_scope.cancel()


async def test_a_lease_revoked_behind_its_back_is_replaced(
        etcd: EtcdClient, nursery: trio.Nursery) -> None:
    events = Events()
    keeper = LeaseKeeper(etcd, TTL, on_lost=events.on_lost, on_regained=events.on_regained)
    old = await nursery.start(keeper.run)
    await etcd.revoke(old)  # an operator, or another shard taking over
    await eventually(lambda: events.regained)  # at the next keepalive, TTL/3 later
    assert len(events.lost) == 1
    assert events.regained[0] != old and keeper.held()
    nursery.cancel_scope.cancel()


async def test_held_follows_the_given_clock(etcd: EtcdClient, nursery: trio.Nursery) -> None:
    now = [0.0]
    keeper = LeaseKeeper(etcd, TTL, margin=0.5, clock=lambda: now[0])
    await nursery.start(keeper.run)
    # The grant was sent at clock 0: held until 0 + TTL - margin, not a moment longer.
    assert keeper.held()
    assert keeper.statistics().held_until == TTL - 0.5
    now[0] = TTL - 0.5
    assert not keeper.held()
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("ttl", "margin", "problem"), [
    (0, None, "TTL is at least 1"),
    (3, -0.1, "margin must be"),
    (3, 2.0, "margin must be"),
])
def test_bad_settings_are_refused(ttl: int, margin: float | None, problem: str) -> None:
    client = EtcdClient(["http://127.0.0.1:2379"])
    with pytest.raises(ValueError, match=problem):
        LeaseKeeper(client, ttl, margin=margin)


async def test_the_keeper_waits_for_etcd_to_grant_the_first_lease(
        etcd_server: EtcdServer) -> None:
    etcd_server.stop()
    async with (EtcdClient([etcd_server.url], timeout=0.5) as etcd,
                trio.open_nursery() as keeping):
        keeper = LeaseKeeper(etcd, TTL)
        started: list[int] = []

        async def start_keeper() -> None:
            started.append(await keeping.start(keeper.run))

        keeping.start_soon(start_keeper)
        await trio.sleep(1.0)
        assert not started and not keeper.held()
        await etcd_server.start()
        await eventually(lambda: started)
        assert keeper.held() and keeper.lease_id == started[0]
        keeping.cancel_scope.cancel()
