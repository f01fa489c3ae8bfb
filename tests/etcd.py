"""A real etcd for tests: `EtcdServer` runs the `etcd` binary as a child process.

Each server is a one-member cluster on free client and peer ports, with its data in a
directory of the test's; `stop()`/`kill()` and `start()` restart it on the same ports
with the same data, `pause()`/`resume()` freeze it (SIGSTOP/SIGCONT: its sockets stay
open and silent, like a stalled or partitioned member). etcd logs (warnings and up) to
`etcd.log` in that directory; a server that fails to start raises with the log's tail.

The binary comes from Debian's `etcd-server`, installed by the first test that needs it
when it is missing (tests/system_packages.py).

`EtcdCluster` runs several members as one cluster, for tests of member failures.

Fixtures, exposed to every test by tests/conftest.py:
- `etcd_binary` (session): the binary's path;
- `etcd_server`: a started server of the test's own, killed when the test ends.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest
import trio
import trustme

from tests.helpers import free_port
from tests.system_packages import ensure_binary

HOST = "127.0.0.1"
#: A first start on a loaded two-core box takes about a second; be generous.
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class EtcdTls:
    """PEM files for an etcd that serves its clients over TLS and asks each for a
    certificate (`--client-cert-auth`), all from one throwaway CA."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    @classmethod
    def make(cls, directory: Path) -> EtcdTls:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        paths = {name: str(directory / f"{name}.pem") for name in
                 ("ca", "server_cert", "server_key", "client_cert", "client_key")}
        ca.cert_pem.write_to_path(paths["ca"])
        for role, issued in (("server", ca.issue_cert("127.0.0.1")),
                             ("client", ca.issue_cert("chatd-shard"))):
            with open(paths[f"{role}_cert"], "wb") as chain:
                chain.write(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
            issued.private_key_pem.write_to_path(paths[f"{role}_key"])
        return cls(**paths)

    def server_args(self) -> list[str]:
        return ["--cert-file", self.server_cert, "--key-file", self.server_key,
                "--trusted-ca-file", self.ca, "--client-cert-auth"]

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


class EtcdServer:
    """One etcd member as a child process. `await start()` returns once it answers."""

    def __init__(self, directory: Path, binary: str, *, name: str = "chatd-test",
                 tls: EtcdTls | None = None, extra_args: Sequence[str] = ()) -> None:
        self.directory = directory
        self.binary = binary
        self.name = name
        self.tls = tls
        self.extra_args = list(extra_args)
        self.client_port = free_port()
        self.peer_port = free_port()
        #: Every member of its cluster as name=peer URL (`EtcdCluster` sets it).
        self.initial_cluster = f"{name}={self.peer_url}"
        self.data_dir = directory / "data"
        self.log_path = directory / "etcd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL, for `EtcdClient([server.url])` (https:// with `tls`)."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    def command(self) -> list[str]:
        peer = self.peer_url
        return [
            self.binary, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster,
            "--logger", "zap", "--log-outputs", str(self.log_path), "--log-level", "warn",
            *(self.tls.server_args() if self.tls is not None else []),
            *self.extra_args,
        ]

    async def start(self) -> None:
        """Start (or restart, on the same ports and data) and wait until it answers."""
        self.spawn()
        await self.wait_ready()

    def spawn(self) -> None:
        """Start the process without waiting for it to answer."""
        if self.running:
            raise RuntimeError(f"etcd {self.url} is running already (pid {self.pid})")
        self.directory.mkdir(parents=True, exist_ok=True)
        # etcd's own log goes to `log_path`; what it writes before that (flag errors,
        # panics) goes to etcd.out.
        self._output = open(self.directory / "etcd.out", "ab")  # noqa: SIM115  # closed in _reap
        self.process = subprocess.Popen(self.command(), stdout=self._output,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("etcd was never started")
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, and wait for it to exit (SIGKILL after `timeout`); its exit status."""
        process = self._live_process()
        self.resume()  # a stopped process would not act on SIGTERM
        process.send_signal(signal.SIGTERM)
        try:
            return self._reap(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return self._reap(None)

    def kill(self) -> None:
        """SIGKILL: etcd gets no chance to close anything."""
        self._live_process().kill()
        self._reap(None)

    def pause(self) -> None:
        """SIGSTOP: it keeps its sockets but answers nothing until `resume()`."""
        os.kill(self._live_process().pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._live_process().pid, signal.SIGCONT)

    def log(self) -> str:
        parts = [path.read_text(errors="replace")
                 for path in (self.directory / "etcd.out", self.log_path) if path.exists()]
        return "\n".join(parts)

    def close(self) -> None:
        """Kill it if it still runs (a test's teardown)."""
        if self.running:
            self.kill()
        elif self.process is not None:
            self._reap(None)

    def _live_process(self) -> subprocess.Popen[bytes]:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"etcd {self.url} is not running")
        return self.process

    def _reap(self, timeout: float | None) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        if self._output is not None:
            self._output.close()
            self._output = None
        return code

    async def wait_ready(self) -> None:
        """Return once it answers that it is healthy (it has a leader)."""
        deadline = time.monotonic() + READY_TIMEOUT
        verify: ssl.SSLContext | bool = (
            self.tls.client_context() if self.tls is not None else True)
        async with httpx.AsyncClient(timeout=1.0, verify=verify) as http:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    code = self._reap(None)
                    raise RuntimeError(f"etcd exited with status {code} while starting; "
                                       f"its log:\n{self._tail()}")
                try:
                    response = await http.get(f"{self.url}/health")
                    if response.status_code == 200 and response.json().get("health") == "true":
                        return
                except (httpx.HTTPError, ValueError):
                    pass  # not listening yet, or not ready
                await trio.sleep(0.05)
        raise TimeoutError(f"etcd {self.url} did not answer within {READY_TIMEOUT} s; "
                           f"its log:\n{self._tail()}")

    def _tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class EtcdCluster:
    """Several members in one cluster, each an `EtcdServer` (`members[i]`). A member that
    is stopped or killed leaves the rest serving while they keep a majority."""

    def __init__(self, directory: Path, binary: str, size: int = 3) -> None:
        self.members = [EtcdServer(directory / f"member{n}", binary, name=f"member{n}")
                        for n in range(size)]
        initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial_cluster

    @property
    def urls(self) -> list[str]:
        return [member.url for member in self.members]

    async def leader(self) -> EtcdServer:
        """The member that leads now, as the running members report it."""
        async with httpx.AsyncClient(timeout=2.0) as http:
            for member in self.members:
                if not member.running:
                    continue
                status = (await http.post(f"{member.url}/v3/maintenance/status",
                                          json={})).json()
                if status.get("leader") == status["header"]["member_id"]:
                    return member
        raise RuntimeError("no running member says it leads")

    async def start(self) -> None:
        # All at once: a member reports healthy only once the cluster has a leader.
        for member in self.members:
            member.spawn()
        for member in self.members:
            await member.wait_ready()

    def close(self) -> None:
        for member in self.members:
            member.close()


@pytest.fixture(scope="session")
def etcd_binary() -> str:
    """The etcd binary, installed from Debian's etcd-server if missing (once a session:
    pytest keeps a session fixture's error, so a failed install is not retried per test)."""
    return ensure_binary("etcd", "etcd-server")


@pytest.fixture
async def etcd_server(etcd_binary: str, tmp_path: Path) -> AsyncIterator[EtcdServer]:
    """A running one-member etcd of this test's own, killed when the test ends."""
    server = EtcdServer(tmp_path / "etcd", etcd_binary)
    try:
        await server.start()
        yield server
    finally:
        server.close()
