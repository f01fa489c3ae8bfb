"""`live`: messages over WebSockets at a fixed offered rate, delivered to online devices.

`direct`: P pairs, each pair one sender and one receiver. `group`: M members online in one
group, S of them posting. Each message carries the sender's clock; the receiver's clock
minus it is the end-to-end latency (same process, same clock). Reports server CPU per
delivered message (every `message` frame a device receives, the sender's own copies
included), latency percentiles, and lost and duplicated deliveries (which must be 0).
"""

from __future__ import annotations

import statistics
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Literal

import trio

from bench.serverproc import BenchServer
from chatd.client import ChatClient, LiveConnection

PASSWORD = "bench password"


@dataclass
class LiveResult:
    scenario: str
    messages_sent: int
    deliveries: int
    lost: int
    duplicated: int
    seconds: float
    server_cpu_us_per_delivery: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("messages sent", f"{self.messages_sent:,}"),
            ("deliveries", f"{self.deliveries:,} ({self.deliveries / self.seconds:,.0f}/s)"),
            ("lost / duplicated", f"{self.lost} / {self.duplicated}"),
            ("server CPU per delivery", f"{self.server_cpu_us_per_delivery:,.0f} µs"),
            ("latency p50 / p99 / max",
             f"{self.p50_ms:.2f} / {self.p99_ms:.2f} / {self.max_ms:.2f} ms"),
        ]


async def _clients(server: BenchServer, count: int, stack: AsyncExitStack) -> list[ChatClient]:
    stamp = time.monotonic_ns() % 10**9
    clients = []
    for n in range(count):
        client = await stack.enter_async_context(ChatClient(server.url))
        handle = f"live{stamp}_{n}"
        await client.register(handle, PASSWORD, handle)
        await client.login(handle, PASSWORD)
        clients.append(client)
    return clients


def _uid(client: ChatClient) -> str:
    assert client.credentials is not None
    return client.credentials.user_id


async def run_live(server: BenchServer, *, scenario: Literal["direct", "group"],
                   rate: float, seconds: float, pairs: int = 10, members: int = 50,
                   senders: int = 5) -> LiveResult:
    async with AsyncExitStack() as stack:
        if scenario == "direct":
            clients = await _clients(server, 2 * pairs, stack)
            plan = []  # (sender index, conversation, expected receivers)
            for n in range(pairs):
                a, b = clients[2 * n], clients[2 * n + 1]
                conv = (await a.open_direct(_uid(b)))["conversation_id"]
                plan.append((2 * n, conv))
        else:
            clients = await _clients(server, members, stack)
            conv = (await clients[0].create_group(
                "bench", [_uid(c) for c in clients[1:]]))["conversation_id"]
            plan = [(n, conv) for n in range(senders)]
        lives: list[LiveConnection] = [await stack.enter_async_context(c.connect())
                                       for c in clients]
        await trio.sleep(0.5)  # presence and catch-up settle before measuring
        for live in lives:  # drain what arrived while setting up
            while True:
                try:
                    live._events_out.receive_nowait()
                except trio.WouldBlock:
                    break

        latencies: list[float] = []
        seen: dict[tuple[int, str, int], int] = {}
        per_sender_interval = len(plan) / rate
        count_per_sender = int(seconds * rate / len(plan))
        expected_per_message = 1 if scenario == "direct" else members - 1  # not the sender

        async def receive(index: int, live: LiveConnection) -> None:
            async for event in live.events():
                if event["type"] != "message":
                    continue
                message = event["message"]
                sent_at = float(message["body"].split(" ", 1)[0])
                latencies.append(time.perf_counter() - sent_at)
                key = (index, message["conversation_id"], message["seq"])
                seen[key] = seen.get(key, 0) + 1

        async def send(index: int, conversation_id: str) -> None:
            live = lives[index]
            start = trio.current_time()
            for n in range(count_per_sender):
                await trio.sleep_until(start + n * per_sender_interval)
                await live.send(conversation_id, f"{time.perf_counter():.6f} " + "x" * 100)

        async with trio.open_nursery() as receivers:
            for index, live in enumerate(lives):
                receivers.start_soon(receive, index, live)
            before = server.cpu_seconds()
            started = time.perf_counter()
            async with trio.open_nursery() as sending:
                for index, conversation_id in plan:
                    sending.start_soon(send, index, conversation_id)
            sent = count_per_sender * len(plan)
            expected = sent * expected_per_message
            with trio.move_on_after(10):
                while sum(seen.values()) < expected:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            elapsed = time.perf_counter() - started
            cpu = server.cpu_seconds() - before
            receivers.cancel_scope.cancel()
    deliveries = sum(seen.values())
    duplicated = sum(count - 1 for count in seen.values())
    quantiles = statistics.quantiles(latencies, n=100)
    return LiveResult(f"{scenario}", sent, deliveries, expected - len(seen), duplicated,
                      elapsed, cpu / deliveries * 1e6, quantiles[49] * 1000,
                      quantiles[98] * 1000, max(latencies) * 1000)
