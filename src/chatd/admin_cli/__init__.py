"""`chatd admin`: an operator's commands, against a running shard or a stopped one.

    chatd admin status                          where every range is, per this shard
    chatd admin promote --range-of SHARD        take over SHARD's range (its owner is down)
    chatd admin rebalance                       hand ranges taken over back to their owners
    chatd admin users list [--handle H] [--after ID] [--limit N]
    chatd admin users show ID
    chatd admin users deactivate ID             revoke every token, refuse logins
    chatd admin users reactivate ID
    chatd admin users erase ID [--yes]          asks for confirmation unless --yes
    chatd admin users export ID [--out FILE]    waits for the export, writes the zip
    chatd admin users limit ID [--note TEXT]    replying only
    chatd admin users unlimit ID [--note TEXT]
    chatd admin reports list [--status open|resolved] [--after ID] [--limit N]
    chatd admin reports resolve ID --action dismiss|uphold|limit|unlimit [--note TEXT]
    chatd admin abuse queue [--after ID] [--limit N]
    chatd admin media quarantine SHA256 --reason TEXT

Every command takes, after its name, one of two doors:

    --url URL             a running shard's admin routes (default http://127.0.0.1:8080),
                          with its server.admin_token from $CHATD_ADMIN_TOKEN (or
                          --admin-token, visible in `ps`); the token is never printed
    --data-dir DIR        a stopped shard's data directory [--config FILE: the config it
                          runs under]; the same services, run on it with no listener and
                          no mesh. Only what that shard holds: its homed users, the
                          reports filed there, its media. Refused while the shard runs.

and --json to print the answer as the admin route's JSON. Exit status: 0 done; 1 the
shard refused or failed (its error code and message are printed); 2 a usage error.
docs/operations.md, "The admin CLI", says what each does and what offline cannot.

Modules: arguments.py (the command tree), commands.py (each command once), door.py
(what a door offers), online.py (REST over httpx), offline.py (the services on a data
directory), render.py (what is printed).
"""

from __future__ import annotations

import argparse
from typing import Any

from chatd.admin_cli import arguments, commands


def add_parser(commands_parser: Any) -> None:
    """Add `admin` to chatd's subcommands (`add_subparsers()`'s object)."""
    arguments.add_parser(commands_parser, __doc__ or "")


def run(args: argparse.Namespace) -> int:
    return commands.run(args)
