"""A chatd server process for benchmarks, and its CPU time from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from chatd.config import RateLimitsConfig

ADMIN_TOKEN = "bench-admin-token"
BENCH_ENV = {
    # Cheap password hashing: the benchmark measures messaging, not argon2id.
    "CHATD_AUTH_ARGON2_OPSLIMIT": "1",
    "CHATD_AUTH_ARGON2_MEMLIMIT_KIB": "8",
    "CHATD_SERVER_ADMIN_TOKEN": ADMIN_TOKEN,
    # Thousands of clients from one address at machine rates: no bucket applies.
    **RateLimitsConfig.unlimited_env(),
}


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _listening(port: int | None = None) -> dict[str, int]:
    """inode -> port of listening TCP sockets (IPv4 and IPv6)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local_port = int(parts[1].rsplit(":", 1)[1], 16)
            if parts[3] == "0A" and (port is None or local_port == port):  # 0A = LISTEN
                found[parts[9]] = local_port
    return found


def find_listening_pid(port: int) -> int | None:
    """The process on this machine listening on `port` (for --url), if we may see it."""
    listening = _listening(port)
    if not listening:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if _socket_inodes(int(entry.name)) & listening.keys():
                return int(entry.name)
        except OSError:
            continue
    return None


def loop_switches(pid: int) -> int:
    """Voluntary context switches of the process's main thread, the event loop: each is
    one sleep and wake-up, which on this VM costs 50-100 us of CPU by itself."""
    for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise RuntimeError(f"no voluntary_ctxt_switches for process {pid}")


class SyscallCounter:
    """`strace -c -f` attached to the server for a measured phase: the total number of
    system calls it made (strace slows the server down, so use it for counts, not for
    CPU or latency figures)."""

    def __init__(self, pid: int) -> None:
        self._output = tempfile.NamedTemporaryFile(prefix="chatd-strace-", suffix=".txt")  # noqa: SIM115
        self._process = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(pid), "-o", self._output.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached to every thread before the phase starts

    def stop(self) -> dict[str, int]:
        """Detach; {syscall name: calls}, with "total"."""
        self._process.send_signal(signal.SIGINT)
        self._process.wait(timeout=30)
        counts: dict[str, int] = {}
        for line in Path(self._output.name).read_text().splitlines():
            parts = line.split()
            # "% time  seconds  usecs/call  calls  [errors]  syscall"; the total row has
            # no usecs/call.
            if parts and parts[-1] == "total" and len(parts) >= 4:
                counts["total"] = int(parts[2])
            elif len(parts) >= 5 and parts[3].isdigit():
                counts[parts[-1]] = int(parts[3])
        self._output.close()
        return counts


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def precise_cpu_seconds(pid: int) -> float:
    """Time on CPU of a process's live threads, in nanoseconds' resolution, from
    /proc/PID/task/*/schedstat.

    `cpu_seconds` counts clock ticks (10 ms here), too coarse for a short run of cheap
    work: a hundred 60 µs round trips can read as zero. This one misses threads that exited
    during the measurement, so it suits runs whose work stays on long-lived threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread exited while we looked
    return total / 1e9


class BenchServer:
    def __init__(self, *, sync: bool = True, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), other_ports: frozenset[int] = frozenset()) -> None:
        """`args`: more `chatd serve` arguments (a cluster's --config and --shard);
        `other_ports`: ports it listens on that are not HTTP (its mesh listener)."""
        self._other_ports = other_ports
        self._dir = tempfile.TemporaryDirectory(prefix="chatd-bench-")
        self.log_path = Path(self._dir.name) / "server.log"
        env = {**os.environ, **BENCH_ENV, "CHATD_STORAGE_SYNC": "true" if sync else "false",
               **(env or {})}
        self._log = open(self.log_path, "wb")  # noqa: SIM115  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatd", "serve", "--listen", "127.0.0.1:0",
             "--data", str(Path(self._dir.name) / "data"), "--log-level", "warning", *args],
            stdout=self._log, stderr=self._log, env=env)
        self.url = self._wait_ready()

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.log_path.read_text())
            port = self._listening_port()
            if port:
                url = f"http://127.0.0.1:{port}"
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(self.log_path.read_text())

    def _listening_port(self) -> int | None:
        # The server logs at warning level here, so read the port from the socket table.
        ports = _listening()
        for inode in _socket_inodes(self.process.pid):
            if inode in ports and ports[inode] not in self._other_ports:
                return ports[inode]
        return None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def metrics(self) -> dict[str, float]:
        response = httpx.get(f"{self.url}/metrics",
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        response.raise_for_status()
        values = {}
        for line in response.text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.split()
                values[name] = float(value)
        return values

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._log.close()
        self._dir.cleanup()
