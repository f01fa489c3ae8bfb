"""The driver: provisions accounts, starts worker processes, measures the server.

Every scenario returns one `Result` row. Server CPU comes from /proc/PID/stat of the
server process (our own, or the process listening on `--url`'s port when it runs on this
machine); it is divided by the deliveries of the measured phase, so it includes whatever
the server did for them: reading the send, the durable append, the `sent` answer, the
delivery, and the receivers' periodic acks.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio
from hdrh.histogram import HdrHistogram

from bench.cluster import handles_homed_on, owner_of_pair
from bench.e2e import hot_costs, megolm_group, new_pickle_key, olm_pairs
from bench.serverproc import (
    SyscallCounter,
    cpu_seconds,
    find_listening_pid,
    loop_switches,
    precise_cpu_seconds,
    rss_bytes,
)
from bench.worker import PAD, new_histogram, now_us
from bench.wsclient import BenchSocket
from chatd.client import ChatClient
from chatd.domain.ring import HashRing
from chatd.protocol.frames import send_request

PASSWORD = "bench password"
#: A worker's CPU use above this share of its wall time means the clients may be the limit.
CLIENT_BUSY = 0.8


@dataclass
class Result:
    scenario: str
    params: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.figures.get("lost", 0) == 0 and self.figures.get("duplicated", 0) == 0
                    and self.figures.get("decrypt_errors", 0) == 0)

    def as_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, **self.params, **self.figures,
                "warnings": self.warnings}


@dataclass
class Target:
    """The server under test."""

    url: str
    pid: int | None
    #: Attach `strace -c -f` for the measured phase (counts only: it slows the server).
    count_syscalls: bool = False
    #: A cluster: every shard's URL and process by name (`url` and `pid` are the
    #: first's); CPU, memory and switches are summed over all of them.
    shards: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: The cluster's ring, to place users and conversations on shards.
    ring: HashRing | None = None

    @property
    def pids(self) -> list[int]:
        if self.shards:
            return [pid for _, pid in self.shards.values()]
        return [self.pid] if self.pid is not None else []

    def port_of(self, shard: str) -> int:
        return urlsplit(self.shards[shard][0]).port or 80

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    def cpu(self, *, precise: bool = False) -> float | None:
        """Server CPU seconds; `precise` reads live threads' run time instead of clock
        ticks (see `precise_cpu_seconds`)."""
        if not self.pids:
            return None
        measure = precise_cpu_seconds if precise else cpu_seconds
        return sum(measure(pid) for pid in self.pids)

    def rss(self) -> int | None:
        return sum(rss_bytes(pid) for pid in self.pids) if self.pids else None

    def switches(self) -> int | None:
        return sum(loop_switches(pid) for pid in self.pids) if self.pids else None

    @classmethod
    def at(cls, url: str) -> Target:
        parts = urlsplit(url)
        return cls(url.rstrip("/"), find_listening_pid(parts.port or 80))


@dataclass
class Account:
    user_id: str
    token: str


async def provision(target: Target, count: int, tag: str, *,
                    home: str | None = None) -> list[Account]:
    """`count` fresh accounts, each logged in once (its token may open many sockets);
    with `home`, all homed on that shard of the cluster."""
    stamp = f"{tag}{time.monotonic_ns() % 10**8}"
    if home is not None:
        assert target.ring is not None
        homed = handles_homed_on(target.ring, home, stamp)
        handles = [next(homed) for _ in range(count)]
    else:
        handles = [f"b{stamp}_{n}" for n in range(count)]
    accounts: list[Account | None] = [None] * count
    limiter = trio.CapacityLimiter(8)

    async def one(n: int) -> None:
        async with limiter, ChatClient(target.url) as client:
            handle = handles[n]
            await client.register(handle, PASSWORD, handle)
            credentials = await client.login(handle, PASSWORD, "bench")
            accounts[n] = Account(credentials.user_id, credentials.token)

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(one, n)
    return [a for a in accounts if a is not None]


async def open_directs(target: Target, pairs: list[tuple[Account, Account]], *,
                       encrypted: bool = False) -> list[str]:
    conversations: list[str] = [""] * len(pairs)
    limiter = trio.CapacityLimiter(8)

    async def one(n: int, a: Account, b: Account) -> None:
        async with limiter, ChatClient(target.url, token=a.token) as client:
            body: dict[str, Any] = {"user_id": b.user_id}
            if encrypted:
                body["encrypted"] = True
            conversations[n] = (await client.request("POST", "/conversations/direct",
                                                     body))["conversation_id"]

    async with trio.open_nursery() as nursery:
        for n, (a, b) in enumerate(pairs):
            nursery.start_soon(one, n, a, b)
    return conversations


@dataclass
class Pair:
    sender: Account
    receiver: Account
    conversation: str
    #: The ports their sockets connect to (None: the target's own).
    sender_port: int | None = None
    receiver_port: int | None = None


async def direct_pairs(target: Target, pairs: int, tag: str, *,
                       placement: str = "any", encrypted: bool = False) -> list[Pair]:
    """`pairs` fresh sender-receiver pairs and their conversations. In a cluster,
    `placement` says where they live: "cross" puts the sender (home and socket), the
    receiver and the conversation's owner on three different shards; "local" puts all
    three on one shard, spreading the pairs over the shards."""
    if not target.shards or placement == "any":
        accounts = await provision(target, 2 * pairs, tag)
        couples = [(accounts[2 * n], accounts[2 * n + 1]) for n in range(pairs)]
        ports: list[tuple[int | None, int | None]] = [(None, None)] * pairs
    else:
        couples, ports = await _placed_couples(target, pairs, tag, placement)
    conversations = await open_directs(target, couples, encrypted=encrypted)
    return [Pair(a, b, conv, *port)
            for (a, b), conv, port in zip(couples, conversations, ports, strict=True)]


async def _placed_couples(target: Target, pairs: int, tag: str, placement: str
                          ) -> tuple[list[tuple[Account, Account]],
                                     list[tuple[int | None, int | None]]]:
    assert target.ring is not None
    names = sorted(target.shards)
    if placement == "cross":
        if len(names) < 3:
            raise SystemExit("cross placement needs a cluster of three shards or more")
        plans = [(names[0], names[1], names[2])] * pairs
    else:
        plans = [(names[n % len(names)],) * 3 for n in range(pairs)]
    couples: list[tuple[Account, Account]] = []
    ports: list[tuple[int | None, int | None]] = []
    pools: dict[str, list[Account]] = {}
    for sender_home, receiver_home, owner in plans:
        for home in (sender_home, receiver_home):
            if len(pools.get(home, [])) < 2:
                # Only pairs whose conversation lands on `owner` qualify: a third of
                # them, or a half, so the pools are drawn generously.
                pools.setdefault(home, []).extend(
                    await provision(target, 4 * pairs + 8,
                                    f"{tag}{home}", home=home))
        senders, receivers = pools[sender_home], pools[receiver_home]
        match = next(((i, j) for i, a in enumerate(senders) for j, b in enumerate(receivers)
                      if a is not b
                      and owner_of_pair(target.ring, a.user_id, b.user_id) == owner), None)
        if match is None:
            raise SystemExit(f"no pair of users with a conversation on {owner}; retry")
        sender = senders.pop(match[0])
        receiver = receivers.pop(match[1] - (1 if senders is receivers and match[1] > match[0]
                                             else 0))
        couples.append((sender, receiver))
        ports.append((target.port_of(sender_home), target.port_of(receiver_home)))
    return couples, ports


async def create_group(target: Target, members: list[Account], *,
                       encrypted: bool = False) -> str:
    body: dict[str, Any] = {"name": "bench", "members": [m.user_id for m in members[1:]]}
    if encrypted:
        body["encrypted"] = True
    async with ChatClient(target.url, token=members[0].token) as client:
        conversation: str = (await client.request("POST", "/groups/create",
                                                  body))["conversation_id"]
        return conversation


# -- worker processes --------------------------------------------------------------------


def source_address(worker: int) -> str:
    """Each worker connects from its own loopback address: ephemeral ports are per
    (source, destination) pair, so 127.0.0.1 alone would stop near 28,000 sockets."""
    return f"127.0.{worker // 250}.{worker % 250 + 2}"


class Workers:
    def __init__(self, plans: Sequence[dict[str, Any]]) -> None:
        self._processes = []
        for plan in plans:
            process = subprocess.Popen([sys.executable, "-m", "bench.worker"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, bufsize=1)
            assert process.stdin is not None
            process.stdin.write(json.dumps(plan) + "\n")
            process.stdin.flush()
            self._processes.append(process)

    def _line(self, process: subprocess.Popen[str]) -> dict[str, Any]:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"a bench worker died (exit {process.wait()}); see stderr")
        event: dict[str, Any] = json.loads(line)
        return event

    def wait_ready(self) -> list[dict[str, Any]]:
        return [self._line(p) for p in self._processes]

    def tell(self, line: str) -> None:
        for process in self._processes:
            assert process.stdin is not None
            process.stdin.write(line + "\n")
            process.stdin.flush()

    def results(self) -> list[dict[str, Any]]:
        return [self._line(p) for p in self._processes]

    def close(self) -> None:
        for process in self._processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[n::parts] for n in range(parts)]


def _merge_histograms(results: list[dict[str, Any]]) -> HdrHistogram:
    histogram = new_histogram()
    for result in results:
        histogram.decode_and_add(result["histogram"])
    return histogram


def _latency_figures(histogram: HdrHistogram) -> dict[str, float]:
    if histogram.get_total_count() == 0:
        return {}
    return {f"p{p}_ms": histogram.get_value_at_percentile(p) / 1000 for p in (50, 95, 99)} | {
        "max_ms": histogram.get_max_value() / 1000}


def _client_warnings(results: list[dict[str, Any]], offered: int | None) -> list[str]:
    warnings = []
    busiest = max((r["cpu"] / r["wall"] for r in results if r.get("wall")), default=0.0)
    if busiest > CLIENT_BUSY:
        warnings.append(f"client-bound: a worker used {busiest:.0%} of a core; "
                        "latency and throughput may be the clients' (try --workers)")
    late = sum(r.get("late_sends", 0) for r in results)
    if offered and late > 0.01 * offered:
        warnings.append(f"{late} of {offered} sends left a worker over 10 ms late "
                        "(latency is still measured from the scheduled time)")
    return warnings


def run_live_phase(target: Target, specs: list[dict[str, Any]], *, workers: int,
                   expected: int, offered: int | None, extra: dict[str, Any],
                   sent_is_delivery: bool = False) -> dict[str, Any]:
    """Spread socket specs over worker processes, run them, and gather the figures.
    With `sent_is_delivery` (a group's senders do not get their own message back), a
    sender's `sent` answer counts as its device's delivery."""
    duration = max((spec.get("offset", 0.0) + spec["interval"] * spec["sends"]
                    for spec in specs if "interval" in spec), default=0.0)
    plans = [{"mode": "live", "host": target.host, "port": target.port,
              "source": source_address(n), "connections": chunk, "duration": duration,
              **extra}
             for n, chunk in enumerate(_split(specs, workers)) if chunk]
    pool = Workers(plans)
    try:
        pool.wait_ready()
        time.sleep(0.5)  # presence and catch-up of the new sockets settle
        start = time.monotonic() + 0.2
        counter = (SyscallCounter(target.pid) if target.count_syscalls and target.pid
                   else None)
        cpu_before, switches_before = target.cpu(), target.switches()
        pool.tell(f"go {start}")
        results = pool.results()
        cpu, switches = target.cpu(), target.switches()
        syscalls = counter.stop() if counter is not None else None
    finally:
        pool.close()
    received = sum(r["received"] for r in results)
    sent = sum(r["sent"] for r in results)
    deliveries = received + (sent if sent_is_delivery else 0)
    first = min((r["first_rx"] for r in results if r["first_rx"]), default=start)
    last = max((r["last_rx"] for r in results if r["last_rx"]), default=start)
    receipts = sum(r.get("receipts", 0) for r in results)
    figures: dict[str, Any] = {
        "sent": sent,
        "send_errors": sum(r["send_errors"] for r in results),
        "deliveries": deliveries,
        "acks": sum(r.get("acks", 0) for r in results),
        "receipts_per_message": receipts / sent if sent else 0.0,
        "lost": max(0, expected - received) if expected >= 0 else 0,
        "duplicated": sum(r["duplicated"] for r in results),
        "closed_by_server": sum(r["closed"] for r in results),
        "deliveries_per_s": (deliveries / max(1e-9, last - min(first, start))
                             if received else 0),
        **_latency_figures(_merge_histograms(results)),
    }
    if cpu is not None and cpu_before is not None and deliveries:
        figures["server_cpu_us_per_delivery"] = (cpu - cpu_before) / deliveries * 1e6
        figures["server_cpu_s"] = cpu - cpu_before
        if sent:
            figures["server_cpu_us_per_message"] = (cpu - cpu_before) / sent * 1e6
    if switches is not None and switches_before is not None and sent:
        figures["loop_switches_per_message"] = (switches - switches_before) / sent
    if syscalls and sent:
        figures["syscalls_per_message"] = syscalls.get("total", 0) / sent
        figures["syscalls_top"] = ", ".join(
            f"{name} {calls / sent:.2f}" for name, calls in sorted(
                syscalls.items(), key=lambda item: -item[1]) if name != "total")[:160]
    figures["client_cpu_s"] = sum(r["cpu"] for r in results)
    figures.update(_crypto_figures(results))
    figures["_warnings"] = _client_warnings(results, offered)
    return figures


async def _unencrypted_warning(target: Target, conversation: str, token: str) -> list[str]:
    """A warning when the server did not make `conversation` end-to-end encrypted (one
    from before `encrypted: true` ignores the field): the bodies are still ciphertext,
    but the server's checks of encrypted conversations were not measured."""
    async with ChatClient(target.url, token=token) as client:
        view = await client.request("GET", f"/conversations/{conversation}")
    if view.get("encrypted") is True:
        return []
    return ["the server ignored encrypted: true: a plain conversation carried the "
            "ciphertext (its content-type checks are not in the figures)"]


def _crypto_figures(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The clients' encryption and decryption cost, when the run was end-to-end."""
    encrypts = sum(r.get("encrypts", 0) for r in results)
    decrypts = sum(r.get("decrypts", 0) for r in results)
    if not encrypts and not decrypts:
        return {}
    figures: dict[str, Any] = {"decrypt_errors": sum(r.get("decrypt_errors", 0)
                                                     for r in results)}
    if encrypts:
        figures["client_encrypt_us_per_message"] = sum(
            r["encrypt_ns"] for r in results) / encrypts / 1000
        figures["body_bytes"] = sum(r["body_chars"] for r in results) / encrypts
    if decrypts:
        figures["client_decrypt_us_per_message"] = sum(
            r["decrypt_ns"] for r in results) / decrypts / 1000
    return figures


def _result(scenario: str, params: dict[str, Any], figures: dict[str, Any]) -> Result:
    warnings = figures.pop("_warnings", [])
    return Result(scenario, params, figures, warnings)


# -- scenarios ---------------------------------------------------------------------------


async def direct(target: Target, *, pairs: int, rate: float, seconds: float,
                 workers: int, ack: bool = True, placement: str = "any",
                 e2e: bool = False) -> Result:
    """With `e2e`: encrypted conversations, every body an Olm message (bench/e2e.py)."""
    placed = await direct_pairs(target, pairs, "de" if e2e else "d", placement=placement,
                                encrypted=e2e)
    per_pair = max(1, int(rate * seconds / pairs))
    interval = pairs / rate
    pickle_key = new_pickle_key()
    sessions = olm_pairs(pairs, pickle_key) if e2e else []
    specs = []
    for n, pair in enumerate(placed):
        offset = interval * n / pairs  # spread the senders over the interval
        sender: dict[str, Any] = {"token": pair.sender.token, "conv": pair.conversation,
                                  "sends": per_pair, "interval": interval, "offset": offset}
        receiver: dict[str, Any] = {"token": pair.receiver.token, "expect": per_pair}
        if e2e:
            sender["e2e"], receiver["e2e"] = sessions[n]
        specs.append(_at(pair.sender_port, sender))
        specs.append(_at(pair.receiver_port, receiver))
    figures = run_live_phase(target, specs, workers=workers, expected=per_pair * pairs,
                             offered=per_pair * pairs,
                             extra={"ack": ack, "pickle_key": pickle_key})
    if e2e:
        figures["_warnings"] += await _unencrypted_warning(
            target, placed[0].conversation, placed[0].sender.token)
    return _result("direct:e2e" if e2e else "direct", {
        "pairs": pairs, "rate": rate, "seconds": seconds, "ack": ack,
        **_cluster_params(target, placement)}, figures)


async def group(target: Target, *, members: int, senders: int, rate: float, seconds: float,
                workers: int, ack: bool = True, e2e: bool = False) -> Result:
    """With `e2e`: an encrypted group, every body a Megolm message, one outbound session
    per sender whose key every other member holds (bench/e2e.py)."""
    accounts = await provision(target, members, "ge" if e2e else "g")
    conv = await create_group(target, accounts, encrypted=e2e)
    per_sender = max(1, int(rate * seconds / senders))
    interval = senders / rate
    total = per_sender * senders
    pickle_key = new_pickle_key()
    sessions = megolm_group(senders, pickle_key) if e2e else []
    specs = []
    for n, account in enumerate(accounts):
        spec: dict[str, Any] = {"token": account.token,
                                "expect": total - (per_sender if n < senders else 0)}
        if n < senders:
            spec |= {"conv": conv, "sends": per_sender, "interval": interval,
                     "offset": interval * n / senders}
        if e2e:
            spec["e2e"] = {"megolm_in": [key for s, (_, key) in enumerate(sessions)
                                         if s != n]}
            if n < senders:
                spec["e2e"] |= sessions[n][0]
        specs.append(spec)
    figures = run_live_phase(target, specs, workers=workers, expected=total * (members - 1),
                             offered=total, extra={"ack": ack, "pickle_key": pickle_key},
                             sent_is_delivery=True)
    if e2e:
        figures["_warnings"] += await _unencrypted_warning(target, conv, accounts[0].token)
    return _result("group:e2e" if e2e else "group", {
        "members": members, "senders": senders, "rate": rate, "seconds": seconds,
        "ack": ack}, figures)


#: Figures of an `e2e` comparison that are counts (summed over its rounds).
_SUMMED = ("sent", "deliveries", "lost", "duplicated", "client_cpu_s")
#: The figures an `e2e` comparison shows of each variant.
_COMPARED = ("sent", "deliveries", "lost", "duplicated", "server_cpu_us_per_message",
             "server_cpu_us_per_delivery", "p50_ms", "p99_ms", "client_cpu_s")


async def e2e(target: Target, *, shape: str, rounds: int = 1, **run: Any) -> Result:
    """`direct` or `group` (`shape`), the plain variant and the end-to-end one at the
    same size, `rounds` times in alternating order (plain first in odd rounds): server CPU
    per message of each and their ratio (what ciphertext costs the server), and the
    clients' CPU per encryption and decryption. With several rounds every figure is the
    median of the rounds, and each round's ratio is listed: on a shared machine one
    pair of runs can differ by the load alone."""
    scenario = direct if shape == "direct" else group
    runs: dict[str, list[Result]] = {"plain": [], "e2e": []}
    for round_ in range(rounds):
        order = ("plain", "e2e") if round_ % 2 == 0 else ("e2e", "plain")
        for variant in order:
            runs[variant].append(await scenario(target, e2e=variant == "e2e", **run))
    figures: dict[str, Any] = {}
    for name, results in runs.items():
        for figure in _COMPARED:
            values = [r.figures[figure] for r in results if figure in r.figures]
            if values:
                # Counts add up over the rounds; rates and costs are the rounds' median.
                figures[f"{name}_{figure}"] = sum(values) if figure in _SUMMED \
                    else statistics.median(values)
    encrypted = runs["e2e"]
    for figure in ("client_encrypt_us_per_message", "client_decrypt_us_per_message",
                   "body_bytes"):
        figures[("e2e_" if figure == "body_bytes" else "") + figure] = statistics.median(
            r.figures.get(figure, 0) for r in encrypted)
    figures["decrypt_errors"] = sum(r.figures.get("decrypt_errors", 0) for r in encrypted)
    figures["plain_body_bytes"] = len(f"T{now_us()} {PAD}")
    figures.update(hot_costs("olm" if shape == "direct" else "megolm", f"T{now_us()} {PAD}"))
    ratios = [e.figures["server_cpu_us_per_message"] / p.figures["server_cpu_us_per_message"]
              for p, e in zip(runs["plain"], encrypted, strict=True)
              if p.figures.get("server_cpu_us_per_message")
              and e.figures.get("server_cpu_us_per_message")]
    if ratios:
        figures["e2e_to_plain_server_cpu"] = statistics.median(ratios)
        figures["e2e_to_plain_server_cpu_rounds"] = ", ".join(f"{r:.2f}" for r in ratios)
    every = runs["plain"] + encrypted
    figures["lost"] = sum(r.figures.get("lost", 0) for r in every)
    figures["duplicated"] = sum(r.figures.get("duplicated", 0) for r in every)
    return Result(f"e2e:{shape}", {**runs["plain"][0].params, "shape": shape,
                                   "rounds": rounds},
                  figures, [w for r in every for w in r.warnings])


async def reactions(target: Target, *, members: int, senders: int, rate: float,
                    seconds: float, workers: int, ack: bool = True) -> Result:
    """Server CPU per reaction against a plain message's, at the same rate into a group
    of the same size: two phases, each in a group of its own with one message in it (a
    reaction is a log entry fanned out to every member, as a message is)."""
    figures = {}
    for phase in ("message", "reaction"):
        accounts = await provision(target, members, "r" + phase[0])
        conv = await create_group(target, accounts)
        async with ChatClient(target.url, token=accounts[0].token) as client:
            base = (await client.send(conv, "react to me"))["seq"]
        per_sender = max(1, int(rate * seconds / senders))
        interval = senders / rate
        total = per_sender * senders
        specs = []
        for n, account in enumerate(accounts):
            # Every socket also catches up the group's creation and the base message.
            spec: dict[str, Any] = {"token": account.token,
                                    "expect": 2 + total - (per_sender if n < senders else 0)}
            if n < senders:
                spec |= {"conv": conv, "sends": per_sender, "interval": interval,
                         "offset": interval * n / senders}
                if phase == "reaction":
                    spec["react_to"] = base
            specs.append(spec)
        measured = run_live_phase(target, specs, workers=workers,
                                  expected=(total + 2) * members - total, offered=total,
                                  extra={"ack": ack}, sent_is_delivery=True)
        for name, value in measured.items():
            if not name.startswith("_"):
                figures[f"{phase}_{name}"] = value
        figures.setdefault("_warnings", []).extend(measured.get("_warnings", []))
    message_cpu = figures.get("message_server_cpu_us_per_message")
    reaction_cpu = figures.get("reaction_server_cpu_us_per_message")
    if message_cpu and reaction_cpu:
        figures["reaction_to_message_cpu"] = reaction_cpu / message_cpu
    figures["lost"] = figures.get("message_lost", 0) + figures.get("reaction_lost", 0)
    figures["duplicated"] = figures.get("message_duplicated", 0) \
        + figures.get("reaction_duplicated", 0)
    return _result("reactions", {"members": members, "senders": senders, "rate": rate,
                                 "seconds": seconds, "ack": ack}, figures)


async def burst(target: Target, *, pairs: int, seconds: float, window: int,
                workers: int, ack: bool = True, placement: str = "any") -> Result:
    """Open loop at the server's pace: each sender keeps `window` sends in flight."""
    specs = []
    for pair in await direct_pairs(target, pairs, "b", placement=placement):
        specs.append(_at(pair.sender_port, {"token": pair.sender.token,
                                            "conv": pair.conversation, "sends": 1}))
        specs.append(_at(pair.receiver_port, {"token": pair.receiver.token}))
    figures = run_live_phase(target, specs, workers=workers, expected=-1, offered=None,
                             extra={"window": window, "burst_seconds": seconds, "ack": ack})
    # Every acknowledged send has exactly one receiver here.
    figures["lost"] = max(0, figures["sent"] - figures["deliveries"])
    figures["durable_sends_per_s"] = figures["sent"] / seconds
    return _result("burst", {"pairs": pairs, "window": window, "seconds": seconds,
                             **_cluster_params(target, placement)}, figures)


def _at(port: int | None, spec: dict[str, Any]) -> dict[str, Any]:
    """A socket spec, connecting to `port` (a shard of a cluster) when one is given."""
    return spec if port is None else {**spec, "port": port}


def _cluster_params(target: Target, placement: str) -> dict[str, Any]:
    if not target.shards:
        return {}
    return {"shards": len(target.shards), "placement": placement}


async def idle(target: Target, *, connections: int, workers: int, per_token: int = 100,
               hold: float = 1.0) -> Result:
    accounts = await provision(target, math.ceil(connections / per_token), "i")
    tokens = [accounts[n // per_token].token for n in range(connections)]
    specs = [{"token": token} for token in tokens]
    plans = [{"mode": "idle", "host": target.host, "port": target.port,
              "source": source_address(n), "connections": chunk, "parallel_handshakes": 64}
             for n, chunk in enumerate(_split(specs, workers)) if chunk]
    await trio.sleep(0.5)
    rss_before, cpu_before = target.rss(), target.cpu()
    began = time.monotonic()
    pool = Workers(plans)
    try:
        ready = pool.wait_ready()
        elapsed = time.monotonic() - began
        cpu_connect = target.cpu()
        pool.tell("go")
        await trio.sleep(hold)  # let the server settle (presence, allocator)
        rss_after = target.rss()
        pool.tell("stop")
        pool.results()
    finally:
        pool.close()
    connected = sum(r["connected"] for r in ready)
    figures: dict[str, Any] = {"connected": connected, "connections_per_s": connected / elapsed}
    if rss_before is not None and rss_after is not None and connected:
        figures["rss_per_connection_kb"] = (rss_after - rss_before) / connected / 1024
        figures["server_rss_mb"] = rss_after / 2**20
    if cpu_before is not None and cpu_connect is not None and connected:
        figures["server_cpu_us_per_connect"] = (cpu_connect - cpu_before) / connected * 1e6
    figures["lost"] = connections - connected
    return Result("idle", {"connections": connections}, figures)


async def catchup(target: Target, *, messages: int) -> Result:
    """A device offline while `messages` arrive reconnects; how fast does it catch up?"""
    alice, bob = await provision(target, 2, "c")
    [conv] = await open_directs(target, [(bob, alice)])
    # Alice's device connects once and acknowledges nothing newer: it owes all of them.
    first = await BenchSocket.connect(target.host, target.port, alice.token)
    await first.aclose()
    sender = await BenchSocket.connect(target.host, target.port, bob.token)
    window = trio.Semaphore(256)  # sends in flight: a client must keep reading answers
    acknowledged = 0
    async with trio.open_nursery() as nursery:
        async def answers() -> None:
            nonlocal acknowledged
            while acknowledged < messages:
                frames = await sender.receive()
                if sender.closed_with is not None:
                    raise RuntimeError(f"the server closed the sender ({sender.closed_with})")
                for frame in frames:
                    if frame["type"] in ("sent", "error"):
                        acknowledged += 1
                        window.release()
        nursery.start_soon(answers)
        for n in range(messages):
            await window.acquire()
            await sender.send(send_request(f"s{n}", conv, f"c{n}", f"T{now_us()} {PAD}"))
    await sender.aclose()
    cpu_before = target.cpu()
    began = time.monotonic()
    device = await BenchSocket.connect(target.host, target.port, alice.token)
    seqs: list[int] = []
    with trio.move_on_after(60):
        while len(seqs) < messages and device.closed_with is None:
            frames = await device.receive()
            seqs.extend(f["message"]["seq"] for f in frames if f["type"] == "message")
    elapsed = time.monotonic() - began
    cpu = target.cpu()
    await device.aclose()
    distinct = len(set(seqs))
    figures: dict[str, Any] = {
        "delivered": len(seqs), "lost": messages - distinct, "duplicated": len(seqs) - distinct,
        "in_order": seqs == sorted(seqs), "seconds": elapsed,
        "messages_per_s": len(seqs) / elapsed if elapsed else 0.0}
    if cpu is not None and cpu_before is not None and seqs:
        figures["server_cpu_us_per_delivery"] = (cpu - cpu_before) / len(seqs) * 1e6
    if not figures["in_order"]:
        figures["lost"] = max(1, figures["lost"])  # out of order counts as a failure
    return Result("catchup", {"messages": messages}, figures)


def health(target: Target) -> None:
    httpx.get(f"{target.url}/healthz", timeout=10).raise_for_status()


def environment() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0],
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "host": os.uname().nodename,
            "loadavg_1m": os.getloadavg()[0], "cwd": str(Path.cwd())}
