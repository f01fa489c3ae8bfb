"""Command line of the benchmark harness."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial

import trio

from bench.live import run_live
from bench.sends import run_sends
from bench.serverproc import BenchServer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    sends = scenarios.add_parser("sends", help="acknowledged REST sends into one group")
    sends.add_argument("--senders", type=int, nargs="+", default=[1, 50])
    sends.add_argument("--messages", type=int, default=2000,
                       help="acknowledged sends per run (split among the senders)")
    sends.add_argument("--no-sync", action="store_true", help="run the server with sync off")
    sends.add_argument("--json", action="store_true", help="print JSON lines, not a table")
    live = scenarios.add_parser("live", help="WebSocket messages at a fixed rate to online devices")
    live.add_argument("shape", choices=["direct", "group"])
    live.add_argument("--rate", type=float, default=None,
                      help="messages/s offered in all (default: direct 200, group 20)")
    live.add_argument("--seconds", type=float, default=10.0)
    live.add_argument("--pairs", type=int, default=10)
    live.add_argument("--members", type=int, default=50)
    live.add_argument("--json", action="store_true", help="print JSON lines, not a table")
    args = parser.parse_args(argv)
    if args.scenario == "live":
        return _live(args)

    for senders in args.senders:
        server = BenchServer(sync=not args.no_sync)
        try:
            result = trio.run(partial(run_sends, server, senders=senders,
                                      per_sender=max(1, args.messages // senders)))
        finally:
            server.stop()
        if args.json:
            print(json.dumps({"scenario": "sends", "sync": not args.no_sync, **asdict(result)}))
        else:
            print(f"\nsends (sync={'off' if args.no_sync else 'on'})")
            for name, value in result.rows():
                print(f"  {name:<26} {value}")
        sys.stdout.flush()
    return 0


def _live(args: argparse.Namespace) -> int:
    rate = args.rate or (200.0 if args.shape == "direct" else 20.0)
    server = BenchServer()
    try:
        result = trio.run(partial(run_live, server, scenario=args.shape, rate=rate,
                                  seconds=args.seconds, pairs=args.pairs, members=args.members))
    finally:
        server.stop()
    if args.json:
        print(json.dumps({"scenario": "live", "rate": rate, **asdict(result)}))
    else:
        print(f"\nlive {args.shape} ({rate:g} msg/s offered for {args.seconds:g} s)")
        for name, value in result.rows():
            print(f"  {name:<26} {value}")
    return 0 if result.lost == 0 and result.duplicated == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
