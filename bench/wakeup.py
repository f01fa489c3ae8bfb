"""`wakeup`: what a wake-up from idle costs on this machine, for chatd and for a bare echo.

Sequential round trips on one socket with a fixed idle gap between them. The same work
costs more the longer the process slept before it (cold caches; on a VM, idle exits), so
server CPU per message at low rates says as much about the machine as about chatd. The
bare echo (a blocking `recv`/`sendall` loop in a subprocess, no Trio, no chatd) is the
control.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import trio

from bench.harness import Result, Target, provision
from bench.serverproc import precise_cpu_seconds
from bench.wsclient import BenchSocket
from chatd.protocol.frames import ping_request

ECHO_SERVER = """
import socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
while data := conn.recv(65536):
    conn.sendall(data)
"""


def _bare_echo(round_trips: int, gap: float) -> float:
    """Server CPU µs per round trip of a blocking echo server in its own process."""
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            before = precise_cpu_seconds(server.pid)
            for _ in range(round_trips):
                client.sendall(b"x" * 100)
                client.recv(100)
                if gap:
                    time.sleep(gap)
            return (precise_cpu_seconds(server.pid) - before) / round_trips * 1e6
    finally:
        server.wait(timeout=10)


async def wakeup(target: Target, *, round_trips: int,
                 gaps: tuple[float, ...] = (0.0, 0.002, 0.01)) -> Result:
    [account] = await provision(target, 1, "w")
    sock = await BenchSocket.connect(target.host, target.port, account.token)
    figures: dict[str, float] = {}
    try:
        for gap in gaps:
            before = target.cpu(precise=True)
            for _ in range(round_trips):
                await sock.send(ping_request())
                while not any(f["type"] == "pong" for f in await sock.receive()):
                    pass
                if gap:
                    await trio.sleep(gap)
            after = target.cpu(precise=True)
            label = f"{gap * 1000:g}ms"
            if before is not None and after is not None:
                figures[f"chatd_ping_us_gap_{label}"] = (after - before) / round_trips * 1e6
            figures[f"bare_echo_us_gap_{label}"] = await trio.to_thread.run_sync(
                _bare_echo, round_trips, gap)
    finally:
        await sock.aclose()
    return Result("wakeup", {"round_trips": round_trips}, figures)
