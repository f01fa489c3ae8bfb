"""A chatd server process for benchmarks, and its CPU time from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ADMIN_TOKEN = "bench-admin-token"
BENCH_ENV = {
    # Cheap password hashing: the benchmark measures messaging, not argon2id.
    "CHATD_AUTH_ARGON2_OPSLIMIT": "1",
    "CHATD_AUTH_ARGON2_MEMLIMIT_KIB": "8",
    "CHATD_AUTH_ATTEMPTS_BURST": "1000000",
    "CHATD_SERVER_ADMIN_TOKEN": ADMIN_TOKEN,
}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class BenchServer:
    def __init__(self, *, sync: bool = True) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="chatd-bench-")
        self.log_path = Path(self._dir.name) / "server.log"
        env = {**os.environ, **BENCH_ENV, "CHATD_STORAGE_SYNC": "true" if sync else "false"}
        self._log = open(self.log_path, "wb")  # noqa: SIM115  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatd", "serve", "--listen", "127.0.0.1:0",
             "--data", str(Path(self._dir.name) / "data"), "--log-level", "warning"],
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
        inodes = set()
        fd_dir = Path(f"/proc/{self.process.pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A = LISTEN
                return int(parts[1].split(":")[1], 16)
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
