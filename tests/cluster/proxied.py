"""Three shards with a controllable loopback TCP proxy on every link, for fault injection.

Every mesh link goes through a `LinkProxy` in the test's own Trio process. Of two shards
the one whose name sorts first dials the other (docs/mesh.md), so the dialer's config
names the proxy's port as the acceptor's mesh address, while every shard's own entry
names the port it listens on. The acceptor never dials the dialer: the address its config
gives for it is never used (it only has to be a valid, distinct one). The ring signature
covers names and vnodes only, so the shards' files may differ in addresses.

With an etcd (`EtcdControl`; None until replication needs one), each shard reaches it
through a proxy of its own, so one shard can be cut from etcd alone: its
`[replication] etcd` names that proxy.

A proxy's controls:

- `hold(direction)`: bytes going that way stop (on open connections and new ones) and
  are delivered, in order, when healed; the other way flows. TCP cannot lose bytes in
  the middle of a stream, so a one-way cut is bytes that do not arrive *yet*: the side
  that hears nothing gives up on the link by its heartbeat rule.
- `sever()`: every connection is closed and new ones are closed at once (a peer that
  is gone, as a kill looks from the network).
- `heal()`: both undone.

Shards are `harness.Shard` processes; SIGSTOP/SIGCONT pause them (a GC-like stall).
"""

from __future__ import annotations

import contextlib
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import trio

from chatd.client import ChatClient
from tests.cluster.harness import (
    CLUSTER_SETTINGS,
    HOST,
    NAMES,
    NUMBERS,
    READY_TIMEOUT,
    SECRET,
    Person,
    Shard,
    eventually,
    handle_homed_at,
    home_of_user,
)
from tests.helpers import PASSWORD, free_port

#: Every pair of shards, as (dialer, acceptor): the name that sorts first dials.
LINKS: tuple[tuple[str, str], ...] = tuple(
    (first, second) for first in NAMES for second in NAMES if first < second)


def peers_of(shard: str) -> tuple[str, ...]:
    return tuple(name for name in NAMES if name != shard)


def link_between(one: str, other: str) -> tuple[str, str]:
    """The (dialer, acceptor) key of the link between two shards."""
    return (one, other) if one < other else (other, one)


# -- the proxy ------------------------------------------------------------------------------

class Flow(Enum):
    """A direction through a proxy: from the side that connects to it (the dialer) to
    its target (the acceptor), or back."""

    FORWARD = "forward"
    BACKWARD = "backward"


class _Gate:
    """Open, or closed until opened again; `passage` waits while it is closed."""

    def __init__(self) -> None:
        self._opened = trio.Event()
        self._opened.set()

    @property
    def is_open(self) -> bool:
        return self._opened.is_set()

    def close(self) -> None:
        if self._opened.is_set():
            self._opened = trio.Event()

    def open(self) -> None:
        self._opened.set()

    async def passage(self) -> None:
        await self._opened.wait()


class LinkProxy:
    """A loopback TCP proxy from `port` to `target_port` whose traffic a test controls
    (the module docstring): run it with `await nursery.start(proxy.run)`."""

    def __init__(self, name: str, port: int, target_port: int) -> None:
        self.name = name
        self.port = port
        self.target_port = target_port
        self._gates = {flow: _Gate() for flow in Flow}
        self._severed = False
        self._connections: set[trio.CancelScope] = set()

    @property
    def cut(self) -> bool:
        return self._severed or not all(gate.is_open for gate in self._gates.values())

    def describe(self) -> str:
        if self._severed:
            return f"{self.name}: severed"
        held = [flow.value for flow, gate in self._gates.items() if not gate.is_open]
        return f"{self.name}: holding {', '.join(held)}" if held else f"{self.name}: open"

    def hold(self, *flows: Flow) -> None:
        for flow in flows:
            self._gates[flow].close()

    def sever(self) -> None:
        self._severed = True
        for connection in list(self._connections):
            connection.cancel()

    def heal(self) -> None:
        self._severed = False
        for gate in self._gates.values():
            gate.open()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=HOST)
        async with trio.open_nursery() as nursery:
            # serve_listeners closes the listeners, and each connection, when cancelled.
            nursery.start_soon(trio.serve_listeners, self._forward, listeners)
            task_status.started()

    async def _forward(self, downstream: trio.SocketStream) -> None:
        if self._severed:
            return  # serve_listeners closes it: the dialer sees the connection drop
        with trio.CancelScope() as connection:
            self._connections.add(connection)
            try:
                try:
                    upstream = await trio.open_tcp_stream(HOST, self.target_port)
                except OSError:
                    return  # the target is down: the dialer sees the connection close
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, downstream, upstream, Flow.FORWARD,
                                       nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, downstream, Flow.BACKWARD,
                                       nursery.cancel_scope)
            finally:
                self._connections.discard(connection)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream, flow: Flow,
                    both: trio.CancelScope) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(65536):
                # A held flow keeps what it read (and reads no more, so TCP pushes back)
                # until healed: late, in order, as a slow network would deliver it.
                await self._gates[flow].passage()
                await sink.send_all(data)
        both.cancel()  # one side is gone: close both


# -- etcd, as the cluster needs it ------------------------------------------------------------

class EtcdControl(Protocol):
    """What the cluster and the nemesis need of an etcd server (`tests/etcd.py`'s
    `EtcdServer` when it lands). Whether each control is sync or async is the server's
    business: a result that is awaitable is awaited (`settled`)."""

    @property
    def url(self) -> str: ...

    def start(self) -> object: ...

    def stop(self) -> object: ...

    def kill(self) -> object: ...

    def pause(self) -> object: ...

    def resume(self) -> object: ...


async def settled(result: object) -> None:
    """Await `result` if it is awaitable (an async control), else nothing to do."""
    if isinstance(result, Awaitable):
        await result


# -- configs ----------------------------------------------------------------------------------

def toml_value(value: Any) -> str:
    """`value` as a TOML value (the few kinds a shard's config holds)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def write_shard_config(path: Path, meshes: Mapping[str, int],
                       sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """A config with `sections` (section -> settings) and `[[cluster.shards]]` at
    `meshes` (shard -> mesh port on 127.0.0.1)."""
    lines: list[str] = []
    for section, settings in sections.items():
        lines += [f"[{section}]", *(f"{key} = {toml_value(value)}"
                                    for key, value in settings.items()), ""]
    for name, port in meshes.items():
        lines += ["[[cluster.shards]]", f'name = "{name}"', f"number = {NUMBERS[name]}",
                  f'mesh = "{HOST}:{port}"', ""]
    path.write_text("\n".join(lines))
    return path


# -- the cluster ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RangeView:
    """One range as a shard reports it (`GET /admin/ranges`): named after its natural
    owner; who acts as its owner and replica now, at which epoch."""

    range: str
    owner: str
    replica: str | None
    epoch: int
    acking: bool


#: A range's acting owner and replica now (None: the shards report no ranges).
Placement = Callable[[str], Awaitable[tuple[str, str] | None]]


class ProxiedCluster:
    """Shards a, b and c, a `LinkProxy` on every link, one before etcd per shard.

    `replication` (the `[replication]` settings; None: no such section, as today's
    config requires) is written into every shard's config; with `etcd`, its `etcd` list
    is set per shard to that shard's etcd proxy."""

    def __init__(self, root: Path, nursery: trio.Nursery, *,
                 replication: Mapping[str, Any] | None = None,
                 etcd: EtcdControl | None = None) -> None:
        self.root = root
        self._nursery = nursery
        self.replication = dict(replication) if replication is not None else None
        self.etcd = etcd
        self.admin_token = secrets.token_urlsafe(24)
        self.mesh_ports = {name: free_port() for name in NAMES}
        self.links = {(dialer, acceptor): LinkProxy(f"{dialer}->{acceptor}", free_port(),
                                                    self.mesh_ports[acceptor])
                      for dialer, acceptor in LINKS}
        self.etcd_proxies: dict[str, LinkProxy] = {}
        if etcd is not None:
            etcd_port = urlsplit(etcd.url).port
            assert etcd_port is not None, f"etcd's url names no port: {etcd.url}"
            self.etcd_proxies = {name: LinkProxy(f"{name}->etcd", free_port(), etcd_port)
                                 for name in NAMES}
        self.shards = {
            name: Shard(name, config=self._write_config(name), data_dir=root / f"data-{name}",
                        log_path=root / f"{name}.log", client_port=free_port(),
                        mesh_port=self.mesh_ports[name])
            for name in NAMES}
        self.paused: set[str] = set()
        self._clients = AsyncExitStack()
        self._client_cache: dict[tuple[str, str, float], ChatClient] = {}
        #: How each shard running at the end exited after SIGTERM (set by `stop`).
        self.exit_statuses: dict[str, int] = {}

    def __getitem__(self, name: str) -> Shard:
        return self.shards[name]

    def _write_config(self, name: str) -> Path:
        # What `name` dials is behind the link's proxy; everything else is where it is.
        meshes = {peer: self.links[(name, peer)].port if name < peer else port
                  for peer, port in self.mesh_ports.items()}
        sections: dict[str, Mapping[str, Any]] = {
            "server": {"graceful_timeout": 1.0, "admin_token": self.admin_token},
            "cluster": {"secret": SECRET, **CLUSTER_SETTINGS},
        }
        if self.replication is not None:
            replication = dict(self.replication)
            if self.etcd_proxies:
                replication["etcd"] = [f"http://{HOST}:{self.etcd_proxies[name].port}"]
            sections["replication"] = replication
        return write_shard_config(self.root / f"{name}.toml", meshes, sections)

    def proxies(self) -> Iterator[LinkProxy]:
        yield from self.links.values()
        yield from self.etcd_proxies.values()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        for proxy in self.proxies():
            await self._nursery.start(proxy.run)
        for shard in self.shards.values():
            shard.start()
        await self.wait_ready()

    async def wait_ready(self, within: float = READY_TIMEOUT) -> None:
        """Every running shard serves and sees every other running shard up."""
        with trio.fail_after(within):
            for shard in self.shards.values():
                if shard.running:
                    await shard.serving()
        running = [name for name, shard in self.shards.items() if shard.running]

        async def linked() -> bool:
            for name in running:
                up = await self.shards[name].peers_up()
                if not all(up.get(peer) for peer in running if peer != name):
                    return False
            return True

        await eventually(linked, within=within, what=f"mesh links among {running}")

    def kill(self, name: str) -> None:
        """SIGKILL (a paused shard too): no shutdown, no flush."""
        self.shards[name].kill()
        self.paused.discard(name)

    async def restart(self, name: str) -> None:
        """Start a killed shard again (same data, same ports) and wait until it serves."""
        shard = self.shards[name]
        assert not shard.running, f"shard {name} is running"
        shard.start()
        await shard.serving()

    def pause(self, name: str) -> None:
        process = self.shards[name].process
        assert process is not None and name not in self.paused, name
        process.send_signal(signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        process = self.shards[name].process
        if name in self.paused and process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
        self.paused.discard(name)

    def isolate(self, name: str, *, from_etcd: bool) -> None:
        """Cut `name` off from both its peers, and from etcd if asked (and there is one):
        its links are severed."""
        for peer in peers_of(name):
            self.links[link_between(name, peer)].sever()
        if from_etcd and name in self.etcd_proxies:
            self.etcd_proxies[name].sever()

    def hold_one_way(self, sender: str, receiver: str) -> None:
        """Bytes from `sender` to `receiver` stop; the other way flows."""
        dialer, acceptor = link_between(sender, receiver)
        self.links[(dialer, acceptor)].hold(Flow.FORWARD if sender == dialer
                                            else Flow.BACKWARD)

    def heal_network(self) -> None:
        for proxy in self.proxies():
            proxy.heal()

    async def heal_all(self) -> None:
        """Every fault undone: links and etcd healed, paused shards resumed, dead ones
        started again (and serving)."""
        self.heal_network()
        for name in list(self.paused):
            self.resume(name)
        for name, shard in self.shards.items():
            if not shard.running:
                await self.restart(name)

    async def stop(self) -> dict[str, int]:
        """SIGTERM to every running shard at once (resumed first); their exit statuses."""
        for name in list(self.paused):
            self.resume(name)
        statuses: dict[str, int] = {}

        async def wait(shard: Shard) -> None:
            statuses[shard.name] = await shard.terminate()

        async with trio.open_nursery() as nursery:
            for shard in self.shards.values():
                if shard.running:
                    nursery.start_soon(wait, shard)
        self.exit_statuses = statuses
        return statuses

    def kill_all(self) -> None:
        for name in NAMES:
            self.kill(name)

    # -- operator views -------------------------------------------------------------------

    async def ranges(self, name: str) -> list[RangeView] | None:
        """The ranges as shard `name` reports them; None while the shard has no such
        route (before replication). Raises for an unreachable shard."""
        async with httpx.AsyncClient(base_url=self.shards[name].url, timeout=5) as http:
            response = await http.get(
                "/admin/ranges", headers={"Authorization": f"Bearer {self.admin_token}"})
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body = response.json()
        assert body["shard"] == name, body
        return [RangeView(item["range"], item["owner"], item.get("replica"),
                          int(item["epoch"]), bool(item.get("acking", False)))
                for item in body["ranges"]]

    async def placement(self, range_name: str) -> tuple[str, str] | None:
        """A range's acting owner and replica as the first shard that answers reports
        them (a `Placement`); None when none reports a replica (no such route yet, or
        no replication)."""
        for name, shard in self.shards.items():
            if not shard.running or name in self.paused:
                continue
            try:
                ranges = await self.ranges(name)
            except (httpx.HTTPError, OSError):
                continue
            if ranges is None:
                return None
            for view in ranges:
                if view.range == range_name and view.replica is not None:
                    return (view.owner, view.replica)
            return None
        return None

    # -- clients --------------------------------------------------------------------------

    async def client(self, shard: str, person: Person | None = None, *,
                     request_timeout: float = 30) -> ChatClient:
        """A client of `shard` (as `person`), closed with the cluster."""
        client = ChatClient(self.shards[shard].url, token=person.token if person else None,
                            timeout=request_timeout)
        return await self._clients.enter_async_context(client)

    async def client_of(self, shard: str, person: Person, *, request_timeout: float,
                        ) -> ChatClient:
        """One client per (shard, person), made on first use (workloads retry through
        them over and over)."""
        key = (shard, person.user_id, request_timeout)
        if key not in self._client_cache:
            self._client_cache[key] = await self.client(
                shard, person, request_timeout=request_timeout)
        return self._client_cache[key]

    async def person(self, *, home: str, prefix: str = "u") -> Person:
        """Register a user homed at `home` through it, and log them in there."""
        handle = handle_homed_at(home, prefix)
        client = await self.client(home)
        registered = await client.register(handle, PASSWORD, handle.title())
        assert home_of_user(registered["user_id"]) == home, registered
        credentials = await client.login(handle, PASSWORD, "checker")
        return Person(handle, credentials.user_id, credentials.device_id, credentials.token)

    async def aclose(self) -> None:
        await self._clients.aclose()


@asynccontextmanager
async def open_proxied_cluster(root: Path, nursery: trio.Nursery, *,
                               replication: Mapping[str, Any] | None = None,
                               etcd: EtcdControl | None = None,
                               ) -> AsyncIterator[ProxiedCluster]:
    """Start the proxies and the three shards; stop them at the end (every fault
    undone first; SIGTERM, SIGKILL if need be)."""
    cluster = ProxiedCluster(root, nursery, replication=replication, etcd=etcd)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.aclose()
        try:
            cluster.heal_network()
            with trio.fail_after(20):
                await cluster.stop()
        finally:
            cluster.kill_all()
