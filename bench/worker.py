"""A client process of the harness: `python -m bench.worker`, driven over stdin/stdout.

The driver writes one JSON plan line; the worker opens its sockets (from its own loopback
source address), answers `{"event": "ready"}`, waits for a `go <monotonic start>` line,
runs, and answers one `{"event": "result", ...}` line. Several of these run at once so
that the clients are not what limits the server.

Modes:
- `live`: every socket receives, counting distinct and duplicated messages and recording
  end-to-end latency into an HDR histogram; sockets with `sends` also send, either at a
  fixed interval from their start offset (open loop: latency is measured from the
  scheduled time, so a stalled client cannot hide a stall of the server) or, with
  `window`, as fast as the server acknowledges (`window` sends in flight). Receivers
  ack every message they get, as a client that sends delivery receipts does (the acks
  of one arriving WebSocket message leave in one write); with `"ack": false`, none.
- `idle`: open the sockets and hold them until `stop`.

A socket spec with `e2e` (the `e2e` variants, bench/e2e.py) encrypts every body it sends
and decrypts every body it gets with the vodozemac sessions the driver pickled for it,
and reports the thread CPU those calls took.

Bodies start with the scheduled send time in µs of CLOCK_MONOTONIC, which every process
on the machine shares.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import trio
from hdrh.histogram import HdrHistogram

from bench.e2e import CipherError, SocketCipher
from bench.wsclient import BenchSocket
from chatd.protocol.frames import ack_request, react_request, send_request

#: A reacting socket alternates between these, so that every frame changes its reaction
#: (and so is a log entry).
REACTIONS = ("👍", "❤️")

#: Latencies are recorded in µs, from 1 µs to 60 s, with 3 significant digits.
HISTOGRAM_RANGE = (1, 60_000_000, 3)
PAD = "x" * 100


def new_histogram() -> HdrHistogram:
    return HdrHistogram(*HISTOGRAM_RANGE)


def now_us() -> int:
    return time.monotonic_ns() // 1000


@dataclass
class LiveStats:
    histogram: HdrHistogram = field(default_factory=new_histogram)
    received: int = 0
    duplicated: int = 0
    sent: int = 0
    send_errors: int = 0
    late_sends: int = 0
    first_rx: float = 0.0
    last_rx: float = 0.0
    closed: int = 0
    acks: int = 0
    receipts: int = 0
    decrypt_errors: int = 0


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _read_line() -> str:
    return await trio.to_thread.run_sync(sys.stdin.readline)


async def _open_all(plan: dict[str, Any]) -> list[tuple[BenchSocket, dict[str, Any]]]:
    host, port, source = plan["host"], plan["port"], plan.get("source")
    opened: list[tuple[BenchSocket, dict[str, Any]]] = []
    limiter = trio.CapacityLimiter(plan.get("parallel_handshakes", 32))

    async def open_one(spec: dict[str, Any]) -> None:
        async with limiter:
            sock = await BenchSocket.connect(host, spec.get("port", port), spec["token"],
                                             source=source)
        opened.append((sock, spec))

    async with trio.open_nursery() as nursery:
        for spec in plan["connections"]:
            nursery.start_soon(open_one, spec)
    for _, spec in opened:
        if "e2e" in spec:  # sessions are unpickled before the measured phase
            spec["cipher"] = SocketCipher.from_spec(spec["e2e"], plan["pickle_key"])
    return opened


def _body_of(spec: dict[str, Any], text: str) -> tuple[str, str]:
    """(body, content type) of a send: `text`, or its ciphertext on an e2e socket."""
    cipher: SocketCipher | None = spec.get("cipher")
    if cipher is None:
        return text, "text/plain"
    content_type, body = cipher.encrypt(text)
    return body, content_type


async def run_live(plan: dict[str, Any], sockets: list[tuple[BenchSocket, dict[str, Any]]],
                   start: float) -> LiveStats:
    stats = LiveStats()
    ack_each = plan.get("ack", True)
    drain_timeout = plan.get("drain_timeout", 5.0)
    window = plan.get("window", 0)
    burst_seconds = plan.get("burst_seconds", 0.0)
    quiet = plan.get("quiet", 1.0)
    remaining = {"sockets": sum(1 for _, spec in sockets if spec.get("expect", 0) > 0)}
    planned_sends = 0 if window else sum(spec.get("sends", 0) for _, spec in sockets)
    all_received = trio.Event()

    def check_done() -> None:
        if remaining["sockets"] == 0 and stats.sent + stats.send_errors >= planned_sends:
            all_received.set()

    if not burst_seconds:
        check_done()
    senders_done = trio.Event()
    last_activity = [trio.current_time()]

    async def receive(sock: BenchSocket, spec: dict[str, Any], room: trio.Semaphore | None
                      ) -> None:
        seen: set[tuple[str, int]] = set()
        expect = spec.get("expect", 0)
        while True:
            acks: list[dict[str, Any]] = []
            frames = await sock.receive()
            if not frames and sock.closed_with is not None:
                stats.closed += 1
                return
            arrived = now_us()
            last_activity[0] = trio.current_time()
            for frame in frames:
                kind = frame["type"]
                if kind == "message":
                    message = frame["message"]
                    key = (message["conversation_id"], message["seq"])
                    if key in seen:
                        stats.duplicated += 1
                        continue
                    seen.add(key)
                    stats.received += 1
                    if not stats.first_rx:
                        stats.first_rx = time.monotonic()
                    stats.last_rx = time.monotonic()
                    body = message["body"]
                    cipher: SocketCipher | None = spec.get("cipher")
                    if cipher is not None and isinstance(body, str) \
                            and message["content_type"] != "text/plain":
                        try:
                            body = cipher.decrypt(message["content_type"], body)
                        except CipherError:
                            stats.decrypt_errors += 1
                    if isinstance(body, str) and body.startswith("T"):
                        stats.histogram.record_value(max(1, arrived - int(body[1:body.index(" ")])))
                    if ack_each:
                        acks.append(ack_request(key[0], key[1]))
                    if len(seen) == expect:
                        remaining["sockets"] -= 1
                        check_done()
                elif kind == "receipt":
                    stats.receipts += 1
                elif kind == "sent" or (kind == "ok" and frame.get("req", "").startswith("s")):
                    stats.sent += 1
                    if room is not None:
                        room.release()
                    check_done()
                elif kind == "error" and frame.get("req", "").startswith("s"):
                    stats.send_errors += 1
                    if room is not None:
                        room.release()
                    check_done()
            if acks:
                stats.acks += len(acks)
                await sock.send_many(acks)

    async def send_at_rate(sock: BenchSocket, spec: dict[str, Any]) -> None:
        interval, count = spec["interval"], spec["sends"]
        first = start + spec.get("offset", 0.0)
        conv = spec["conv"]
        for n in range(count):
            scheduled = first + n * interval
            await trio.sleep_until(scheduled)
            if trio.current_time() - scheduled > 0.01:
                stats.late_sends += 1
            stamp = now_us() - int((trio.current_time() - scheduled) * 1e6)
            if "react_to" in spec:  # a reaction (answered `ok`) instead of a message
                await sock.send(react_request(conv, spec["react_to"], REACTIONS[n % 2],
                                              req=f"s{n}"))
                continue
            await sock.send(send_request(f"s{n}", conv, f"{spec['token'][-12:]}-{n}",
                                         *_body_of(spec, f"T{stamp} {PAD}")))

    async def send_burst(sock: BenchSocket, spec: dict[str, Any], room: trio.Semaphore) -> None:
        await trio.sleep_until(start)
        conv = spec["conv"]
        deadline = start + burst_seconds
        n = 0
        while trio.current_time() < deadline:
            await room.acquire()
            await sock.send(send_request(f"s{n}", conv, f"{spec['token'][-12:]}-b{n}",
                                         *_body_of(spec, f"T{now_us()} {PAD}")))
            n += 1

    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as sending:
            for sock, spec in sockets:
                room = trio.Semaphore(window) if window and spec.get("sends") else None
                nursery.start_soon(receive, sock, spec, room)
                if spec.get("sends"):
                    if room is not None:
                        sending.start_soon(send_burst, sock, spec, room)
                    else:
                        sending.start_soon(send_at_rate, sock, spec)
        senders_done.set()
        if burst_seconds:
            # Open-ended: once every worker's senders stopped, wait until deliveries stop.
            await trio.sleep_until(start + burst_seconds)
            with trio.move_on_after(drain_timeout):
                while trio.current_time() - last_activity[0] < quiet:  # noqa: ASYNC110
                    await trio.sleep(0.05)
        else:
            # Other workers may still be sending: wait for the whole run, then the drain.
            with trio.move_on_at(start + plan.get("duration", 0.0) + drain_timeout):
                await all_received.wait()
        nursery.cancel_scope.cancel()
    return stats


async def main() -> None:
    plan = json.loads(await _read_line())
    cpu_before = process_cpu_seconds()
    began = time.monotonic()
    sockets = await _open_all(plan)
    _emit({"event": "ready", "connected": len(sockets), "seconds": time.monotonic() - began})
    command = (await _read_line()).split()
    if not command or command[0] != "go":
        return
    if plan["mode"] == "idle":
        while (await _read_line()).strip() not in ("stop", ""):
            pass
        _emit({"event": "result", "connected": len(sockets),
               "cpu": process_cpu_seconds() - cpu_before})
    else:
        # The driver's start is in time.monotonic(); trio's clock has its own offset.
        start = trio.current_time() + (float(command[1]) - time.monotonic())
        cpu_before = process_cpu_seconds()
        wall = time.monotonic()
        stats = await run_live(plan, sockets, start)
        _emit({"event": "result", "sent": stats.sent, "send_errors": stats.send_errors,
               "received": stats.received, "duplicated": stats.duplicated,
               "acks": stats.acks, "receipts": stats.receipts,
               "late_sends": stats.late_sends, "closed": stats.closed,
               "first_rx": stats.first_rx, "last_rx": stats.last_rx,
               "decrypt_errors": stats.decrypt_errors, **_crypto_costs(sockets),
               "cpu": process_cpu_seconds() - cpu_before, "wall": time.monotonic() - wall,
               "histogram": stats.histogram.encode().decode()})
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            for sock, _ in sockets:
                nursery.start_soon(sock.aclose)


def _crypto_costs(sockets: list[tuple[BenchSocket, dict[str, Any]]]) -> dict[str, int]:
    """What the sockets' encryption and decryption cost, and the bodies they made."""
    ciphers: list[SocketCipher] = [spec["cipher"] for _, spec in sockets if "cipher" in spec]
    return {"encrypt_ns": sum(c.encrypt_ns for c in ciphers),
            "encrypts": sum(c.encrypts for c in ciphers),
            "decrypt_ns": sum(c.decrypt_ns for c in ciphers),
            "decrypts": sum(c.decrypts for c in ciphers),
            "body_chars": sum(c.body_chars for c in ciphers)}


if __name__ == "__main__":
    trio.run(main)
