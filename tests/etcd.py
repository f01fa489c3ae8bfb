"""A real etcd for tests: `EtcdServer` runs the `etcd` binary as a child process.

Each server is a one-member cluster on free client and peer ports, with its data in a
directory of the test's; `stop()`/`kill()` and `start()` restart it on the same ports
with the same data, `pause()`/`resume()` freeze it (SIGSTOP/SIGCONT: its sockets stay
open and silent, like a stalled or partitioned member). etcd logs (warnings and up) to
`etcd.log` in that directory; a server that fails to start raises with the log's tail.

The binary comes from Debian's `etcd-server`, installed by the first test that needs it
when it is missing (tests/system_packages.py).

Fixtures, exposed to every test by tests/conftest.py:
- `etcd_binary` (session): the binary's path;
- `etcd_server`: a started server of the test's own, killed when the test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO

import httpx
import pytest
import trio

from tests.helpers import free_port
from tests.system_packages import ensure_binary

HOST = "127.0.0.1"
#: A first start on a loaded two-core box takes about a second; be generous.
READY_TIMEOUT = 30.0


class EtcdServer:
    """One etcd member as a child process. `await start()` returns once it answers."""

    def __init__(self, directory: Path, binary: str, *, name: str = "chatd-test",
                 extra_args: Sequence[str] = ()) -> None:
        self.directory = directory
        self.binary = binary
        self.name = name
        self.extra_args = list(extra_args)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = directory / "data"
        self.log_path = directory / "etcd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL, for `EtcdClient([server.url])`."""
        return f"http://{HOST}:{self.client_port}"

    def command(self) -> list[str]:
        peer = f"http://{HOST}:{self.peer_port}"
        return [
            self.binary, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--logger", "zap", "--log-outputs", str(self.log_path), "--log-level", "warn",
            *self.extra_args,
        ]

    async def start(self) -> None:
        """Start (or restart, on the same ports and data) and wait until it answers."""
        self.spawn()
        await self._wait_ready()

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

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        async with httpx.AsyncClient(timeout=1.0) as http:
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
