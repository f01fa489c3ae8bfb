"""Command line of the benchmark harness."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial

import trio

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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    raise SystemExit(main())
