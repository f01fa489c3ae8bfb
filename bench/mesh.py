"""The shard mesh alone, between two processes: what a frame costs, and how many go.

`python -m bench.mesh` starts shard b's mesh in a child process (its handler answers
every request with its body) and drives shard a's from this one, over 127.0.0.1:

- **paced**: one request at a time, back to back and then one every 2 ms: CPU per round
  trip of each process and the voluntary context switches of its main thread. At 2 ms
  apart both sides sleep between requests, as shards do at a few hundred messages per
  second: the answering side's figure is then what one frame in and one frame out cost
  a shard that was asleep (compare the bare blocking echo of `python -m bench wakeup`);
  the requester's includes its own timer's wake-up.
- **throughput**: N requests in flight (1, 16, 128, 1024) for a few seconds, and posts as
  fast as the queue takes them: requests (posts) per second and CPU per request.

The body is a map of six fields, ~190 bytes. Nothing else runs in either process, so
the figures are the transport's (and Trio's, and the kernel's) alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import trio

from bench.serverproc import cpu_seconds, loop_switches
from chatd.transport import Mesh, PeerAddress

SECRET = b"bench-mesh-secret-of-32-bytes-ok"
BODY = {"conversation_id": 123456789, "user": 987654321, "seq": 42, "ok": True,
        "kind": "message", "text": "x" * 130}
HOST = "127.0.0.1"


class Echo:
    def handle_request(self, peer: str, method: str, body: Any) -> Any:
        return body

    def handle_post(self, peer: str, method: str, body: Any) -> None:
        pass


def _mesh(name: str, port: int, peer: str, peer_port: int) -> Mesh:
    return Mesh(shard=name, listen=(HOST, port), peers=[PeerAddress(peer, HOST, peer_port)],
                secret=SECRET, ring_signature="bench", boot_id=f"{name}-{os.getpid()}",
                handler=Echo())


async def _serve() -> None:
    """Shard b (child process): prints its port, answers until killed."""
    mesh = _mesh("b", 0, "a", 9)  # b never dials a (the name that sorts first dials)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(mesh.run)
        print(port, flush=True)


def _usage(pid: int) -> tuple[float, int]:
    return cpu_seconds(pid), loop_switches(pid)


async def _drive(port: int, child: int, seconds: float) -> None:
    mesh = _mesh("a", 0, "b", port)
    up = trio.Event()
    mesh.on_peer_up(lambda peer, boot_id: up.set())
    async with trio.open_nursery() as nursery:
        await nursery.start(mesh.run)
        await up.wait()
        for _ in range(500):  # warm up
            await mesh.request("b", "echo", BODY)
        print("paced, one request at a time (CPU us and switches per round trip)")
        for gap in (0.0, 0.002):
            count = 3000 if gap else 10_000
            a0, b0 = _usage(os.getpid()), _usage(child)
            start = trio.current_time()
            for n in range(count):
                await mesh.request("b", "echo", BODY)
                if gap:
                    await trio.sleep_until(start + (n + 1) * gap)
            a1, b1 = _usage(os.getpid()), _usage(child)
            print(f"  {gap * 1000:g} ms apart: requester {(a1[0] - a0[0]) / count * 1e6:6.1f} us "
                  f"{(a1[1] - a0[1]) / count:4.2f} sw | answerer "
                  f"{(b1[0] - b0[0]) / count * 1e6:6.1f} us {(b1[1] - b0[1]) / count:4.2f} sw")
        print(f"throughput, {seconds:g} s each (per second; CPU us per request, both sides)")
        for in_flight in (1, 16, 128, 1024, 0):
            await _throughput(mesh, child, in_flight, seconds)
        nursery.cancel_scope.cancel()


async def _throughput(mesh: Mesh, child: int, in_flight: int, seconds: float) -> None:
    done = 0
    a0, b0 = cpu_seconds(os.getpid()), cpu_seconds(child)
    began = time.monotonic()
    end = began + seconds
    if in_flight:
        async def one() -> None:
            nonlocal done
            while time.monotonic() < end:
                await mesh.request("b", "echo", BODY)
                done += 1

        async with trio.open_nursery() as flight:
            for _ in range(in_flight):
                flight.start_soon(one)
    else:
        while time.monotonic() < end:
            done += sum(mesh.post("b", "p", BODY) for _ in range(1000))
            await trio.lowlevel.checkpoint()
        await trio.sleep(0.2)  # the last posts reach b
    elapsed = time.monotonic() - began
    cpu = cpu_seconds(os.getpid()) - a0 + cpu_seconds(child) - b0
    what = f"{in_flight:5d} in flight" if in_flight else "        posts"
    print(f"  {what}: {done / elapsed:9,.0f}/s  {cpu / max(1, done) * 1e6:5.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mesh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="length of each throughput run")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(_serve)
        return
    child = subprocess.Popen([sys.executable, "-m", "bench.mesh", "--serve"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        trio.run(_drive, port, child.pid, args.seconds)
    finally:
        child.kill()
        child.wait()


if __name__ == "__main__":
    main()
