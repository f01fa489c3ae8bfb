"""`sends`: acknowledged sends into one group from N concurrent senders over REST.

Reports server CPU per acknowledged send (from /proc), the mean number of appends per
synced WriteBatch (from /metrics), throughput and latency percentiles.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import httpx
import trio

from bench.serverproc import BenchServer

PASSWORD = "bench password"


@dataclass
class SendsResult:
    senders: int
    sends: int
    seconds: float
    server_cpu_us_per_send: float
    appends_per_batch: float
    p50_ms: float
    p99_ms: float
    #: Server CPU of a trivial request (GET /healthz): the HTTP stack's own cost.
    floor_cpu_us_per_request: float


async def _account(http: httpx.AsyncClient, handle: str) -> tuple[str, dict[str, str]]:
    await http.post("/register", json={"handle": handle, "password": PASSWORD,
                                       "display_name": handle})
    body = (await http.post("/login", json={"handle": handle, "password": PASSWORD})).json()
    return body["user_id"], {"Authorization": f"Bearer {body['token']}"}


async def _http_floor(server: BenchServer, http: httpx.AsyncClient, requests: int) -> float:
    before = server.cpu_seconds()
    for _ in range(requests):
        await http.get("/healthz")
    return (server.cpu_seconds() - before) / requests * 1e6


async def run_sends(server: BenchServer, *, senders: int, per_sender: int) -> SendsResult:
    limits = httpx.Limits(max_connections=senders + 4, max_keepalive_connections=senders + 4)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
        stamp = time.monotonic_ns()
        accounts = [await _account(http, f"bench{stamp % 10**9}_{n}") for n in range(senders)]
        created = await http.post("/groups/create", headers=accounts[0][1], json={
            "name": "bench", "members": [user_id for user_id, _ in accounts[1:]]})
        group = created.json()["conversation_id"]
        latencies: list[float] = []

        async def sender(n: int, headers: dict[str, str]) -> None:
            for i in range(per_sender):
                started = time.perf_counter()
                response = await http.post("/messages/send", headers=headers, json={
                    "conversation_id": group, "client_msg_id": f"{n}-{i}",
                    "content_type": "text/plain", "body": "x" * 100})
                latencies.append(time.perf_counter() - started)
                if response.status_code != 201:
                    raise RuntimeError(response.text)

        # Warm up connections and caches, then measure.
        async with trio.open_nursery() as nursery:
            for n, (_, headers) in enumerate(accounts):
                nursery.start_soon(sender, n + 10_000_000, headers)
        latencies.clear()
        before_metrics = server.metrics()
        before_cpu = server.cpu_seconds()
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n, (_, headers) in enumerate(accounts):
                nursery.start_soon(sender, n, headers)
        elapsed = time.perf_counter() - started
        cpu = server.cpu_seconds() - before_cpu
        after_metrics = server.metrics()
        floor = await _http_floor(server, http, 1000)
    sends = senders * per_sender
    batches = (after_metrics["chatd_commit_batches_total"]
               - before_metrics["chatd_commit_batches_total"])
    commands = (after_metrics["chatd_commit_commands_total"]
                - before_metrics["chatd_commit_commands_total"])
    quantiles = statistics.quantiles(latencies, n=100)
    return SendsResult(senders, sends, elapsed, cpu / sends * 1e6,
                       commands / batches if batches else 0.0,
                       quantiles[49] * 1000, quantiles[98] * 1000, floor)
