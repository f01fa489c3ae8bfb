"""`chatd admin`: an operator's commands against a running shard (its admin routes).

    chatd admin status     [--url URL]                  where every range is, per this shard
    chatd admin promote    --range-of SHARD [--url URL] make the shard at URL the owner of
                                                        SHARD's range (its owner is down)
    chatd admin rebalance  [--url URL]                  hand the ranges the shard at URL took
                                                        over back to their natural owners

The admin token comes from --admin-token or $CHATD_ADMIN_TOKEN and is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx


def add_parser(commands: Any) -> None:
    admin = commands.add_parser(
        "admin", help="operate a running shard (replication status, failover, rebalance)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    admin.add_argument("action", choices=["status", "promote", "rebalance"])
    admin.add_argument("--url", default="http://127.0.0.1:8080", help="the shard to ask")
    admin.add_argument("--range-of", metavar="SHARD",
                       help="promote: the range (named after its natural owner) to take over")
    admin.add_argument("--admin-token", help="the shard's server.admin_token (default: "
                                             "$CHATD_ADMIN_TOKEN)")


def run(args: argparse.Namespace) -> int:
    token = args.admin_token or os.environ.get("CHATD_ADMIN_TOKEN", "")
    if not token:
        print("chatd admin: give the admin token (--admin-token or CHATD_ADMIN_TOKEN)",
              file=sys.stderr)
        return 2
    if args.action == "promote" and not args.range_of:
        print("chatd admin promote: --range-of SHARD is required", file=sys.stderr)
        return 2
    method, path, body = {
        "status": ("GET", "/admin/ranges", None),
        "promote": ("POST", "/admin/promote", {"range": args.range_of}),
        # Each hand-back copies the range to its owner first: allow minutes.
        "rebalance": ("POST", "/admin/rebalance", None),
    }[args.action]
    try:
        response = httpx.request(method, args.url.rstrip("/") + path, json=body,
                                 headers={"Authorization": f"Bearer {token}"},
                                 timeout=300 if args.action == "rebalance" else 30)
    except httpx.HTTPError as exc:
        print(f"chatd admin: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    try:
        answer: Any = response.json()
    except ValueError:
        answer = {"error": {"code": "unreadable", "message": response.text[:500]}}
    if response.status_code >= 400:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        print(f"chatd admin {args.action}: {response.status_code} {error.get('code', '')}: "
              f"{error.get('message', '')}", file=sys.stderr)
        return 1
    if args.action == "status" and isinstance(answer, dict):
        print(_table(answer))
    else:
        print(json.dumps(answer, indent=2))
    return 0


def _table(status: dict[str, Any]) -> str:
    lines = [f"shard {status.get('shard')}: factor {status.get('factor')}, "
             f"settled {status.get('settled')}, lease {status.get('lease')}, "
             f"failovers {status.get('failovers')}, replica moves {status.get('replica_moves')}",
             f"{'range':<12}{'epoch':>6}  {'owner':<12}{'replica':<12}here"]
    for entry in status.get("ranges", []):
        here = ""
        if "acking" in entry:
            stream = entry.get("stream") or {}
            here = ("owner, acknowledging" if entry["acking"] else "owner, NOT acknowledging")
            if stream:
                here += f" (stream {stream.get('mode')}, lag {stream.get('lag_seconds', 0):.3f}s)"
        elif "following" in entry:
            here = "replica, following" if entry["following"] else "replica, waiting for a copy"
        lines.append(f"{entry['range']:<12}{entry['epoch']:>6}  {entry['owner']:<12}"
                     f"{entry['replica'] or '-':<12}{here}")
    return "\n".join(lines)
