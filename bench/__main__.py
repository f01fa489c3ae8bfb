"""chatd's benchmark harness: `python -m bench SCENARIO` (or `chatd bench SCENARIO`).

Scenarios:
  direct   pairs of users over WebSockets at a fixed total offered rate
  group    members of one group online, some posting at a fixed rate, fan-out to all
  idle     authenticated idle WebSocket connections: RSS per connection, connections/s
  catchup  a device offline while messages arrive reconnects and catches up
  burst    senders keep a window of sends in flight: the maximum sustained rate
  reactions  server CPU per reaction vs per plain message at the same rate into a group
           (50 members, 1,000/s by default), and their ratio
  sweep    `direct` or `group` (--shape) over increasing offered rates, with a plot
  appends  the durable append path alone, in this process (no network)
  wakeup   server CPU of a round trip after 0/2/10 ms idle, chatd and a bare echo
  sends    acknowledged REST sends into one group
  media    upload and download MB/s of 1 GiB, server CPU per MB, RSS during the
           transfer, ranged 64 KiB reads per second
  e2e      `direct` and `group`, each plain and then end to end (encrypted conversations,
           Olm or Megolm bodies made with vodozemac): server CPU per message of both and
           their ratio, client CPU per encryption and decryption
  all      every scenario above but sends, media and e2e

`--e2e` runs `direct` or `group` end to end only.

Without --url it starts its own server (data in a temp dir); with --cluster FILE, one
process per shard of that config, and server CPU is the sum of all of them (`direct`
and `burst` place users and conversations with --placement). `--quick` runs every
scenario small (under a minute). Figures go out as a table, and as JSON lines with
--json. The exit status is 1 when any message was lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

import trio

from bench import harness
from bench.appends import appends
from bench.cluster import BenchCluster
from bench.harness import Result, Target
from bench.media import media
from bench.report import plot_sweep, print_result
from bench.sends import run_sends
from bench.serverproc import BenchServer
from bench.wakeup import wakeup

SCENARIOS = ["direct", "group", "idle", "catchup", "burst", "sweep", "appends", "wakeup",
             "reactions", "sends", "media", "e2e", "all"]
#: The server's settings for benchmarks: idle sockets are not reaped while held; media
#: takes the 1 GiB transfer.
SERVER_ENV = {"CHATD_WEBSOCKET_IDLE_TIMEOUT": "3600",
              "CHATD_MEDIA_MAX_UPLOAD_BYTES": str(2 << 30),
              "CHATD_MEDIA_QUOTA_BYTES": str(64 << 30)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=SCENARIOS, nargs="?", default="all")
    parser.add_argument("--url", help="benchmark a running server instead of starting one "
                        "(CPU and RSS figures need it to run on this machine)")
    parser.add_argument("--cluster", metavar="FILE",
                        help="start every shard of this cluster config (e.g. "
                             "conf/cluster-3.toml) and sum their CPU")
    parser.add_argument("--placement", choices=["any", "cross", "local"], default=None,
                        help="in a cluster, direct/burst pairs: cross = sender, receiver and "
                             "owner on three shards (direct's default); local = all on one "
                             "shard, pairs spread over the shards (burst's default)")
    parser.add_argument("--replication-factor", type=int, choices=[1, 2], default=None,
                        help="with --cluster: the shards' replication.factor (their "
                             "default: 2 with three or more shards)")
    parser.add_argument("--quick", action="store_true", help="every figure small and fast")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--json", metavar="PATH",
                        help="append JSON lines to PATH ('-' for stdout, then no table)")
    parser.add_argument("--plot", metavar="PNG", default="sweep.png",
                        help="where sweep draws latency against offered rate")
    parser.add_argument("--no-sync", action="store_true", help="server with storage.sync off")
    parser.add_argument("--strace", action="store_true",
                        help="count the server's system calls per message with strace -c -f "
                             "(CPU and latency figures of such a run are strace's, not chatd's)")
    parser.add_argument("--e2e", action="store_true",
                        help="direct/group: the end-to-end variant (encrypted conversations, "
                             "Olm/Megolm ciphertext bodies); `e2e` compares both")
    parser.add_argument("--no-ack", action="store_true",
                        help="direct/group/burst/sweep: receivers do not ack (by default "
                             "every delivered message is acked, as a client with delivery "
                             "receipts does)")
    size = parser.add_argument_group("sizes (defaults are the documented runs)")
    size.add_argument("--pairs", type=int, help="direct/burst: sender-receiver pairs (50)")
    size.add_argument("--rate", type=float, help="direct: msg/s in all (500); group: posts/s (20)")
    size.add_argument("--seconds", type=float, help="length of a timed run (10)")
    size.add_argument("--members", type=int, help="group: members online (50)")
    size.add_argument("--senders", type=int, help="group: members posting (5)")
    size.add_argument("--connections", type=int, help="idle: sockets to hold (10000)")
    size.add_argument("--messages", type=int, help="catchup (10000), appends (100000)")
    size.add_argument("--window", type=int, help="burst: sends in flight per sender (16)")
    size.add_argument("--shape", choices=["direct", "group"], default="direct",
                      help="sweep: which scenario to sweep")
    size.add_argument("--rates", help="sweep: comma-separated offered rates")
    size.add_argument("--rounds", type=int,
                      help="e2e: plain/e2e pairs of runs, in alternating order (3)")
    size.add_argument("--megabytes", type=int, help="media: MiB transferred (1024)")
    return parser


def _pick(args: argparse.Namespace, name: str, full: Any, quick: Any) -> Any:
    value = getattr(args, name)
    if value is not None:
        return value
    return quick if args.quick else full


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _runners(args: argparse.Namespace, own_server: BenchServer | None
             ) -> dict[str, Callable[[Target], list[Result]]]:
    workers = args.workers

    def one(coroutine: Callable[..., Any], **kwargs: Any) -> Callable[[Target], list[Result]]:
        return lambda target: [trio.run(partial(coroutine, target, **kwargs))]

    seconds = _pick(args, "seconds", 10.0, 1.0)
    ack = not args.no_ack
    direct_shape = {"pairs": _pick(args, "pairs", 50, 5), "workers": workers, "ack": ack}
    group_shape = {"members": _pick(args, "members", 50, 10),
                   "senders": _pick(args, "senders", 5, 2), "workers": workers, "ack": ack}
    direct_run = {"rate": _pick(args, "rate", 500.0, 100.0), "seconds": seconds,
                  "placement": args.placement or "cross", **direct_shape}
    group_run = {"rate": _pick(args, "rate", 20.0, 20.0), "seconds": seconds, **group_shape}
    direct = one(harness.direct, e2e=args.e2e, **direct_run)
    group = one(harness.group, e2e=args.e2e, **group_run)

    def e2e(target: Target) -> list[Result]:
        rounds = _pick(args, "rounds", 3, 1)
        return [trio.run(partial(harness.e2e, target, shape="direct", rounds=rounds,
                                 **direct_run)),
                trio.run(partial(harness.e2e, target, shape="group", rounds=rounds,
                                 **group_run))]

    reactions = one(harness.reactions, rate=_pick(args, "rate", 1000.0, 50.0),
                    seconds=seconds, members=_pick(args, "members", 50, 10),
                    senders=_pick(args, "senders", 10, 2), workers=workers, ack=ack)
    idle = one(harness.idle, connections=_pick(args, "connections", 10_000, 200),
               workers=workers)
    catchup = one(harness.catchup, messages=_pick(args, "messages", 10_000, 300))
    wakeup_ = one(wakeup, round_trips=_pick(args, "messages", 1000, 100))
    burst = one(harness.burst, pairs=_pick(args, "pairs", 50, 5),
                seconds=_pick(args, "seconds", 5.0, 1.0), window=_pick(args, "window", 16, 8),
                workers=workers, ack=ack, placement=args.placement or "local")

    def sweep(target: Target) -> list[Result]:
        default = "250,500,1000,2000,4000" if args.shape == "direct" else "10,20,50,100,200"
        rates = [float(r) for r in (args.rates or ("50,100" if args.quick else default))
                 .split(",")]
        scenario, shape = ((harness.direct, direct_shape) if args.shape == "direct"
                           else (harness.group, group_shape))
        results = []
        for rate in rates:
            result = trio.run(partial(scenario, target, rate=rate,
                                      seconds=_pick(args, "seconds", 5.0, 1.0), **shape))
            result.scenario = f"sweep:{args.shape}"
            results.append(result)
            if args.json != "-":
                print_result(result)
        plot_sweep(results, args.plot)
        return results

    def appends_(target: Target) -> list[Result]:
        return [trio.run(partial(appends, messages=_pick(args, "messages", 100_000, 5000),
                                 conversations=100, sync=not args.no_sync))]

    def sends(target: Target) -> list[Result]:
        if own_server is None:
            raise SystemExit("sends reads the server's /metrics: it needs its own server")
        senders = 1 if args.quick else 50
        result = trio.run(partial(run_sends, own_server, senders=senders,
                                  per_sender=20 if args.quick else 40))
        return [Result("sends", {"senders": senders}, asdict(result))]

    media_ = one(media, size=_pick(args, "megabytes", 1024, 32) << 20,
                 ranged_reads=_pick(args, "messages", 5000, 200))
    return {"direct": direct, "group": group, "idle": idle, "catchup": catchup,
            "burst": burst, "sweep": sweep, "appends": appends_, "wakeup": wakeup_,
            "sends": sends, "media": media_, "reactions": reactions, "e2e": e2e}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _raise_fd_limit()
    names = [n for n in SCENARIOS if n not in ("all", "sends", "media", "e2e")] \
        if args.scenario == "all" else [args.scenario]
    failed = False
    out = sys.stdout if args.json == "-" else (open(args.json, "a") if args.json else None)  # noqa: SIM115
    try:
        if out is not None:
            out.write(json.dumps({"scenario": "environment", **harness.environment()}) + "\n")
        env = dict(SERVER_ENV)
        if args.replication_factor is not None:
            env["CHATD_REPLICATION_FACTOR"] = str(args.replication_factor)
        for name in names:
            cluster = BenchCluster(args.cluster, sync=not args.no_sync, env=env) \
                if args.cluster and not args.url and name != "appends" else None
            server = None if args.url or cluster or name == "appends" else BenchServer(
                sync=not args.no_sync, env=SERVER_ENV)
            try:
                if cluster is not None:
                    first_url, first_pid = next(iter(cluster.shards.values()))
                    target = Target(first_url, first_pid, shards=cluster.shards,
                                    ring=cluster.ring)
                else:
                    url = args.url or (server.url if server is not None else "")
                    target = Target.at(url) if args.url else Target(
                        url, server.process.pid if server is not None else None)
                target.count_syscalls = args.strace
                results = _runners(args, server)[name](target)
            finally:
                if server is not None:
                    server.stop()
                if cluster is not None:
                    cluster.stop()
            for result in results:
                failed |= not result.ok
                if out is not None:
                    out.write(json.dumps(result.as_json()) + "\n")
                    out.flush()
                if args.json != "-" and name != "sweep":
                    print_result(result)
    finally:
        if out is not None and out is not sys.stdout:
            out.close()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
