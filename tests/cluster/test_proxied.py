"""The fault tools do what they say: a proxy holds one direction while the other flows
and delivers what it held when healed, severs and refuses, and the shards behind the
proxies see the partitions the nemesis makes (tests/cluster/proxied.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.cluster.harness import HOST, eventually
from tests.cluster.proxied import Flow, LinkProxy, ProxiedCluster
from tests.helpers import free_port


class Target:
    """A TCP server behind the proxy: keeps what each connection sent, and the
    connections themselves, to write back on."""

    def __init__(self) -> None:
        self.received = b""
        self.streams: list[trio.SocketStream] = []
        self.arrived = trio.Event()

    async def serve(self, stream: trio.SocketStream) -> None:
        self.streams.append(stream)
        while data := await stream.receive_some(1024):
            self.received += data
            self.arrived.set()


@pytest.fixture
async def proxied_target(nursery: trio.Nursery) -> AsyncIterator[tuple[LinkProxy, Target]]:
    target = Target()
    listeners = await nursery.start(trio.serve_tcp, target.serve, 0)
    proxy = LinkProxy("test", free_port(), listeners[0].socket.getsockname()[1])
    await nursery.start(proxy.run)
    yield proxy, target


async def test_a_held_direction_waits_while_the_other_flows(
        proxied_target: tuple[LinkProxy, Target]) -> None:
    proxy, target = proxied_target
    proxy.hold(Flow.FORWARD)
    async with await trio.open_tcp_stream(HOST, proxy.port) as client:
        await client.send_all(b"held")
        await eventually(lambda: len(target.streams) > 0, within=5, what="a connection")
        await target.streams[0].send_all(b"flows")
        with trio.fail_after(5):
            assert await client.receive_some(1024) == b"flows"
        await trio.sleep(0.3)
        assert target.received == b"" and proxy.cut
        proxy.heal()
        with trio.fail_after(5):
            await target.arrived.wait()
        assert target.received == b"held" and not proxy.cut


async def test_severed_closes_every_connection_and_refuses_new_ones_until_healed(
        proxied_target: tuple[LinkProxy, Target]) -> None:
    proxy, target = proxied_target
    async with await trio.open_tcp_stream(HOST, proxy.port) as client:
        await client.send_all(b"before")
        with trio.fail_after(5):
            await target.arrived.wait()
        proxy.sever()
        with trio.fail_after(5):
            assert await client.receive_some(1024) == b""
    async with await trio.open_tcp_stream(HOST, proxy.port) as refused:
        with trio.fail_after(5):
            assert await refused.receive_some(1024) == b""
    proxy.heal()
    async with await trio.open_tcp_stream(HOST, proxy.port) as client:
        await client.send_all(b"after")
        await eventually(lambda: target.received.endswith(b"after"), within=5,
                         what="the bytes sent after healing")
    assert len(target.streams) == 2  # the refused connection never reached the target


async def test_the_shards_see_the_partitions_the_proxies_make(
        proxied_cluster: ProxiedCluster) -> None:
    """Isolating c severs both its links; holding a's bytes to b silences a for b,
    whose heartbeat rule (3 s) then drops the link, and a's redials cannot finish
    their handshake until healed. Each heals back to a fully linked cluster."""
    cluster = proxied_cluster

    async def peers() -> dict[str, dict[str, bool]]:
        return {name: await cluster[name].peers_up() for name in ("a", "b", "c")}

    async def links_are(expected: dict[str, dict[str, bool]]) -> bool:
        seen = await peers()
        return all(seen[name][peer] == up for name, ups in expected.items()
                   for peer, up in ups.items())

    async def until(expected: dict[str, dict[str, bool]]) -> None:
        await eventually(lambda: links_are(expected), within=15, what=f"links {expected}")

    cluster.isolate("c", from_etcd=True)
    await until({"a": {"b": True, "c": False}, "b": {"a": True, "c": False},
                 "c": {"a": False, "b": False}})
    cluster.heal_network()
    await cluster.wait_ready()

    cluster.hold_one_way("a", "b")
    await until({"a": {"b": False, "c": True}, "b": {"a": False, "c": True}})
    await trio.sleep(1.0)  # redials meanwhile do not get through
    assert await links_are({"a": {"b": False}, "b": {"a": False}}), await peers()
    cluster.heal_network()
    await cluster.wait_ready()
