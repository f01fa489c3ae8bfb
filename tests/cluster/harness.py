"""A real three-shard cluster for tests: `chatd serve` processes, a proxy, placement.

Every shard is a child process (`python -m chatd serve`) with its own RocksDB directory,
client port and mesh port, all fixed when the cluster is made, so a shard killed with
SIGKILL comes back on the same addresses with the same data. Children inherit
PYTHONPATH, so they run the code of the tree the tests run from.

The proxy: shards `a` and `b` dial `c` (the name that sorts first dials, docs/mesh.md),
so their config names a `Proxy` port as c's mesh address, while c's own config names
the port c listens on. The ring signature covers names and vnodes only
(`HashRing.signature()`), so the files may differ in addresses. Stopping the proxy cuts
c off from a and b (both links), starting it again heals the partition; a and b stay
linked to each other.

Placement is computed from the outside exactly as the shards do: a conversation's owner
is `RING.shard_for(id)`, a user's home is the shard number inside the id, a handle's
home is `RING.shard_for_text(handle)` (where it is registered, so where its user is
homed).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from chatd.client import ChatClient, LiveConnection
from chatd.domain.ids import COUNTER_BITS, MAX_SHARD, direct_conversation_id
from chatd.domain.ring import HashRing
from tests.helpers import FAST_AUTH_ENV, PASSWORD, UNLIMITED_SENDS_ENV, free_port

NAMES = ("a", "b", "c")
NUMBERS = {"a": 0, "b": 1, "c": 2}
RING = HashRing(NAMES)
SECRET = "cluster-tests-secret-0123456789abcdef"
#: Cluster tests write at machine rates (a writer sending until its owner dies, 8 MB of
#: sends to make a range worth copying) and create groups until one lands on a given
#: shard: the send and group_create buckets are lifted; limits are tested in tests/web.
CLUSTER_RATELIMITS_ENV = {**UNLIMITED_SENDS_ENV,
                          "CHATD_RATELIMITS_GROUP_CREATE_PER_ACCOUNT": "off",
                          "CHATD_RATELIMITS_GROUP_CREATE_PER_ADDRESS": "off"}
HOST = "127.0.0.1"
#: Push notifications go to fakes on loopback (tests/cluster/test_push.py).
CLUSTER_PUSH_ENV = {"CHATD_PUSH_ALLOW_PRIVATE_ENDPOINTS": "true"}
#: Heartbeats every 0.1 s; a peer silent for 30 of them (3 s) is down. Links cut by a
#: kill or the proxy close at once; the silence rule is only for a stalled peer, and on
#: a loaded 2-core box a busy shard (or the proxy, in the test's own process) can be
#: silent for over a second without being down. Longer than the request deadline (2 s),
#: so a stalled owner is met by the deadline first.
CLUSTER_SETTINGS: dict[str, Any] = {
    "heartbeat_interval": 0.1,
    "missed_heartbeats": 30,
    "request_timeout": 2.0,
}
#: Generous: three shards, their argon2 and RocksDB, and pytest share two cores.
READY_TIMEOUT = 30.0
#: Every shard's server.admin_token (for /admin routes).
ADMIN_TOKEN = "cluster-tests-admin-token"


# -- placement --------------------------------------------------------------------------------

def home_of_user(user_id: int | str) -> str:
    number = (int(user_id) >> COUNTER_BITS) & MAX_SHARD
    return {n: name for name, n in NUMBERS.items()}[number]


def owner_of(conversation_id: int | str) -> str:
    return RING.shard_for(int(conversation_id))


def owner_of_direct(user_a: int | str, user_b: int | str) -> str:
    return owner_of(direct_conversation_id(int(user_a), int(user_b)))


_handles = itertools.count(1)


def handle_homed_at(shard: str, prefix: str = "u") -> str:
    """A fresh username whose home (the ring's shard for it) is `shard`."""
    while True:
        handle = f"{prefix}{os.getpid()}_{next(_handles)}"
        if RING.shard_for_text(handle) == shard:
            return handle


# -- waiting ------------------------------------------------------------------------------------

async def eventually(check: Callable[[], object], *, within: float, what: str,
                     interval: float = 0.05) -> Any:
    """Poll `check` (sync or async) until it returns something other than None or
    False, and return that; fail after `within` seconds saying `what` was awaited."""
    deadline = trio.current_time() + within
    last: object = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result is not None and result is not False:
                return result
            last = result
        except (httpx.TransportError, OSError) as exc:
            last = exc
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what} "
                                 f"(last: {last!r})")
        await trio.sleep(interval)


async def logged(shard: Shard, text: str, *, times: int = 1, within: float = 15.0) -> None:
    """Until `shard`'s log (every run of it) holds `text` at least `times` times."""
    await eventually(lambda: shard.log().count(text) >= times, within=within,
                     what=f"shard {shard.name} to log {text!r} {times} time(s)")


# -- config ---------------------------------------------------------------------------------

#: The mesh's own failure model, without replication: tests/cluster/test_replication.py
#: and the checker run with it on.
NO_REPLICATION: Mapping[str, Any] = {"factor": 1}


def write_config(path: Path, meshes: Mapping[str, int], *, numbers: Mapping[str, int] = NUMBERS,
                 secret: str = SECRET, cluster: Mapping[str, Any] = CLUSTER_SETTINGS,
                 replication: Mapping[str, Any] = NO_REPLICATION,
                 admin_token: str = "") -> Path:
    """A cluster config listing `meshes` (shard -> mesh port on 127.0.0.1)."""
    lines = ["[server]", "graceful_timeout = 1.0"]
    if admin_token:
        lines.append(f'admin_token = "{admin_token}"')
    lines += ["", "[replication]"]
    lines += [f"{key} = {_toml(value)}" for key, value in replication.items()]
    lines += ["", "[cluster]", f'secret = "{secret}"']
    lines += [f"{key} = {value!r}" for key, value in cluster.items()]
    for name, port in meshes.items():
        lines += ["", "[[cluster.shards]]", f'name = "{name}"', f"number = {numbers[name]}",
                  f'mesh = "{HOST}:{port}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


# -- one shard ----------------------------------------------------------------------------------

class Shard:
    """One `chatd serve` child process; `start` again after `kill` or `terminate` for a
    restart (same data directory, same ports, unless given another config)."""

    def __init__(self, name: str, *, config: Path, data_dir: Path, log_path: Path,
                 client_port: int, mesh_port: int) -> None:
        self.name = name
        self.config = config
        self.data_dir = data_dir
        self.log_path = log_path
        self.client_port = client_port
        self.mesh_port = mesh_port
        self.url = f"http://{HOST}:{client_port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where this run's output starts in the log

    def start(self, config: Path | None = None) -> None:
        assert not self.running, f"shard {self.name} is running already"
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("CHATD_")}  # nothing from the outside changes settings
        env.update(FAST_AUTH_ENV)
        env.update(CLUSTER_RATELIMITS_ENV)
        env.update(CLUSTER_PUSH_ENV)
        self.log_path.touch()
        self._log_start = self.log_path.stat().st_size
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chatd", "serve", "--config",
                 str(config or self.config), "--shard", self.name, "--listen",
                 f"{HOST}:{self.client_port}", "--data", str(self.data_dir)],
                stdout=log, stderr=log, env=env)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """Everything every run of this shard has written."""
        return self.log_path.read_text(errors="replace")

    def run_log(self) -> str:
        """What the current (or last) run has written."""
        with open(self.log_path, "rb") as file:
            file.seek(self._log_start)
            return file.read().decode(errors="replace")

    async def serving(self, within: float = READY_TIMEOUT) -> None:
        """Wait until this run logged that it serves."""
        def started() -> bool:
            if "chatd.server: serving " in self.run_log():
                return True
            if not self.running:
                raise AssertionError(f"shard {self.name} exited early:\n{self.run_log()}")
            return False
        await eventually(started, within=within, what=f"shard {self.name} to serve")

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as http:
            response = await http.get("/healthz")
            response.raise_for_status()
            health: dict[str, Any] = response.json()
            return health

    async def peers_up(self) -> dict[str, bool]:
        return {peer["shard"]: peer["up"] for peer in (await self.health())["peers"]}

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what was acknowledged must be on disk."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def terminate(self, within: float = 15.0) -> int:
        """SIGTERM and wait for the exit status (SIGKILL after `within` seconds)."""
        process = self.process
        assert process is not None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(within):
            return await trio.to_thread.run_sync(process.wait)
        process.kill()
        await trio.to_thread.run_sync(process.wait)
        raise AssertionError(f"shard {self.name} did not stop within {within:g} s of SIGTERM")

    async def exit_status(self, within: float = READY_TIMEOUT) -> int:
        """Wait for a run that is expected to end by itself (a refused start)."""
        process = self.process
        assert process is not None
        with trio.fail_after(within):
            return await trio.to_thread.run_sync(process.wait)


# -- the proxy ----------------------------------------------------------------------------------

class Proxy:
    """A loopback TCP proxy, as a Trio task: `await nursery.start(proxy.run)`. `stop()`
    closes every connection it carries and its listener (new connections are refused);
    `start()` listens again on the same port."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self._nursery: trio.Nursery | None = None
        self._period: trio.CancelScope | None = None
        self._stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._serve)
            task_status.started()
            await trio.sleep_forever()  # `start` needs the nursery open while stopped

    async def stop(self) -> None:
        assert self._period is not None, "the proxy is stopped already"
        self._period.cancel()
        await self._stopped.wait()

    async def start(self) -> None:
        assert self._nursery is not None and self._period is None, "the proxy is running"
        await self._nursery.start(self._serve)

    async def _serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                     ) -> None:
        self._stopped = trio.Event()
        try:
            with trio.CancelScope() as self._period:
                listeners = await trio.open_tcp_listeners(self.port, host=HOST)
                async with trio.open_nursery() as nursery:
                    # serve_listeners closes the listeners, and each connection's streams,
                    # when cancelled.
                    nursery.start_soon(trio.serve_listeners, self._forward, listeners)
                    task_status.started()
        finally:
            self._period = None
            self._stopped.set()

    async def _forward(self, downstream: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream(HOST, self.target_port)
        except OSError:
            return  # the target is down: the dialer sees the connection close
        async with upstream, trio.open_nursery() as nursery:
            async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while data := await source.receive_some(65536):
                        await sink.send_all(data)
                nursery.cancel_scope.cancel()  # one side is gone: close both

            nursery.start_soon(pump, downstream, upstream)
            nursery.start_soon(pump, upstream, downstream)


# -- people -------------------------------------------------------------------------------------

@dataclass
class Person:
    """A registered, logged-in user (one device): the token works on every shard."""

    handle: str
    user_id: str
    device_id: str
    token: str


# -- the cluster --------------------------------------------------------------------------------

class Cluster:
    """Shards a, b and c, with the proxy between {a, b} and c."""

    def __init__(self, root: Path, nursery: trio.Nursery, *,
                 replication: Mapping[str, Any] = NO_REPLICATION) -> None:
        self.root = root
        self._nursery = nursery
        self.mesh_ports = {name: free_port() for name in NAMES}
        self.proxy = Proxy(free_port(), self.mesh_ports["c"])
        # What a and b are told: c is at the proxy. What c is told: where it listens.
        settings = {"replication": replication, "admin_token": ADMIN_TOKEN}
        self.view_of_ab = write_config(root / "ab.toml",
                                       {**self.mesh_ports, "c": self.proxy.port}, **settings)
        self.view_of_c = write_config(root / "c.toml", self.mesh_ports, **settings)
        self.shards = {
            name: Shard(name, config=self.view_of_c if name == "c" else self.view_of_ab,
                        data_dir=root / f"data-{name}", log_path=root / f"{name}.log",
                        client_port=free_port(), mesh_port=self.mesh_ports[name])
            for name in NAMES}
        self._clients = AsyncExitStack()
        #: How each shard running at the end exited after SIGTERM (set by `stop`).
        self.exit_statuses: dict[str, int] = {}

    def __getitem__(self, name: str) -> Shard:
        return self.shards[name]

    async def start(self) -> None:
        await self._nursery.start(self.proxy.run)
        for shard in self.shards.values():
            shard.start()
        await self.wait_ready()

    async def wait_ready(self, within: float = READY_TIMEOUT) -> None:
        """Every running shard serves and sees every peer up."""
        with trio.fail_after(within):
            for shard in self.shards.values():
                if shard.running:
                    await shard.serving()
        await self.wait_links(within=within)

    async def wait_links(self, expected: Mapping[str, Mapping[str, bool]] | None = None, *,
                         within: float = READY_TIMEOUT) -> None:
        """Until each shard's /healthz shows its peers as `expected` (default: every
        running shard sees every other running shard up)."""
        running = [name for name, shard in self.shards.items() if shard.running]
        wanted = expected or {name: {peer: True for peer in running if peer != name}
                              for name in running}

        async def seen() -> bool:
            for name, peers in wanted.items():
                up = await self.shards[name].peers_up()
                if any(up.get(peer) != state for peer, state in peers.items()):
                    return False
            return True

        await eventually(seen, within=within, what=f"mesh links {dict(wanted)}")

    async def restart(self, name: str) -> None:
        """SIGKILL the shard if it runs, start it again (same data, same ports), and
        wait until every link is up."""
        shard = self.shards[name]
        shard.kill()
        shard.start()
        await self.wait_ready()

    async def stop(self) -> dict[str, int]:
        """SIGTERM to every running shard at once; their exit statuses."""
        statuses: dict[str, int] = {}
        running = [shard for shard in self.shards.values() if shard.running]

        async def wait(shard: Shard) -> None:
            statuses[shard.name] = await shard.terminate()

        async with trio.open_nursery() as nursery:
            for shard in running:
                nursery.start_soon(wait, shard)
        self.exit_statuses = statuses
        return statuses

    def kill_all(self) -> None:
        for shard in self.shards.values():
            shard.kill()

    # -- clients ---------------------------------------------------------------------------

    async def client(self, shard: str, person: Person | None = None) -> ChatClient:
        """A client of `shard` (as `person`, with their token), closed with the cluster."""
        client = ChatClient(self.shards[shard].url, token=person.token if person else None)
        return await self._clients.enter_async_context(client)

    async def person(self, *, home: str, via: str | None = None, login_via: str | None = None,
                     prefix: str = "u", device: str = "test") -> Person:
        """Register a user homed at `home` through shard `via`, then log in through
        `login_via` (both default to the home)."""
        handle = handle_homed_at(home, prefix)
        registrar = await self.client(via or home)
        registered = await registrar.register(handle, PASSWORD, handle.title())
        assert home_of_user(registered["user_id"]) == home, registered
        return await self.login(handle, via=login_via or home, device=device)

    async def login(self, handle: str, *, via: str, device: str = "test") -> Person:
        client = await self.client(via)
        credentials = await client.login(handle, PASSWORD, device)
        return Person(handle, credentials.user_id, credentials.device_id, credentials.token)

    async def people(self, homes: Sequence[str], **kwargs: Any) -> list[Person]:
        return [await self.person(home=home, **kwargs) for home in homes]

    async def aclose(self) -> None:
        await self._clients.aclose()


@asynccontextmanager
async def open_cluster(root: Path, nursery: trio.Nursery, *,
                       replication: Mapping[str, Any] = NO_REPLICATION
                       ) -> AsyncIterator[Cluster]:
    """Start the three shards and the proxy; stop them (SIGTERM, SIGKILL if need be)."""
    cluster = Cluster(root, nursery, replication=replication)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.aclose()
        try:
            with trio.fail_after(20):
                await cluster.stop()
        finally:
            cluster.kill_all()


def tracebacks(text: str) -> list[str]:
    """The log records of `text` that carry a traceback (a bug, wherever it is)."""
    found = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if "Traceback (most recent call last)" in line:
            found.append("\n".join(lines[max(0, index - 1):index + 30]))
    return found


# -- the live stream ----------------------------------------------------------------------------

async def next_of(live: LiveConnection, kind: str, *, within: float = 10.0) -> dict[str, Any]:
    """The next frame of type `kind` (others are skipped)."""
    with trio.fail_after(within):
        while True:
            event = await live.next_event()
            if event["type"] == kind:
                return event


async def messages(live: LiveConnection, count: int, *, within: float = 30.0,
                   conversation: str | None = None) -> list[dict[str, Any]]:
    """The next `count` messages (of `conversation`, if given), as they arrived."""
    found: list[dict[str, Any]] = []
    with trio.fail_after(within):
        while len(found) < count:
            event = await live.next_event()
            if event["type"] == "message" and conversation in (
                    None, event["message"]["conversation_id"]):
                found.append(event["message"])
    return found


async def nothing_more(live: LiveConnection, kind: str = "message", wait: float = 0.5, *,
                       conversation: str | None = None) -> None:
    """No frame of type `kind` (about `conversation`, if given) arrives within `wait`
    seconds."""
    with trio.move_on_after(wait):
        while True:
            event = await live.next_event()
            if conversation is not None and conversation != event.get(
                    "message", event).get("conversation_id"):
                continue
            assert event["type"] != kind, event


async def history(client: ChatClient, conversation_id: str) -> list[dict[str, Any]]:
    """The whole log of a conversation, paging forwards."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await client.history(conversation_id, after=after, limit=200)
        found.extend(page["messages"])
        if not page["has_more"]:
            return found
        after = page["messages"][-1]["seq"]


async def group_owned_by(client: ChatClient, owner: str, members: Sequence[int | str], *,
                         name: str = "g") -> str:
    """A new group (made through `client`, with `members`) whose owner is `owner`:
    groups are made until one's id lands there (ids are Snowflakes, owners their hash)."""
    for _ in range(60):
        group: str = (await client.create_group(name, list(members)))["conversation_id"]
        if owner_of(group) == owner:
            return group
    raise AssertionError(f"no group landed on {owner}")
