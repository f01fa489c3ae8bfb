"""`chatd admin`'s arguments: the command tree, and the door options every command takes.

The door options are on each command (`chatd admin users list --url …`), as the
existing commands always took them after the action.
"""

from __future__ import annotations

import argparse
from typing import Any

TOKEN_VARIABLE = "CHATD_ADMIN_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8080"


def _id(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not an id (a positive decimal number)")
    return int(text)


def _door_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    door = options.add_argument_group(
        "where (one of)", "a running shard over HTTP, or a stopped shard's data directory")
    exclusive = door.add_mutually_exclusive_group()
    exclusive.add_argument("--url", help=f"a running shard (default {DEFAULT_URL})")
    exclusive.add_argument("--data-dir", metavar="DIR",
                           help="a stopped shard's data directory (offline: no token needed, "
                                "only what that shard holds)")
    door.add_argument("--admin-token", metavar="TOKEN",
                      help=f"with --url: the shard's server.admin_token (default "
                           f"${TOKEN_VARIABLE}; prefer the variable: arguments show in `ps`)")
    door.add_argument("--config", metavar="FILE",
                      help="with --data-dir: the config the shard runs under (default "
                           "$CHATD_CONFIG, else none; CHATD_* variables apply as for serve)")
    options.add_argument("--json", action="store_true",
                         help="print the answer as JSON (the admin route's form)")
    return options


def add_parser(commands: Any, description: str) -> None:
    common = _door_options()
    admin = commands.add_parser(
        "admin", help="operate a shard: accounts, reports, media, replication",
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Not dest="action": `reports resolve --action` is one of the arguments.
    actions = admin.add_subparsers(dest="command_group", metavar="ACTION", required=True)

    def leaf(parent: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(
            name, help=help_text, description=help_text, parents=[common])
        return parser

    leaf(actions, "status", "where every range is, as the shard sees it")
    promote = leaf(actions, "promote", "make the shard the owner of a range whose owner "
                                       "is down")
    promote.add_argument("--range-of", metavar="SHARD", required=True,
                         help="the range (named after its natural owner) to take over")
    leaf(actions, "rebalance", "hand the ranges the shard took over back to their "
                               "natural owners")

    users = actions.add_parser("users", help="accounts homed on the shard").add_subparsers(
        dest="users_action", metavar="USERS_ACTION", required=True)
    listing = leaf(users, "list", "the users homed on the shard, in id order (a page)")
    listing.add_argument("--handle", default="", help="only handles starting with this")
    listing.add_argument("--after", type=_id, default=0, metavar="ID",
                         help="the page after this user id")
    listing.add_argument("--limit", type=int, metavar="N", help="users in the page (100)")
    for name, text in (("show", "one account: profile, state, devices, counts"),
                       ("deactivate", "revoke every token and refuse logins until "
                                      "reactivated"),
                       ("reactivate", "allow logins again")):
        leaf(users, name, text).add_argument("user_id", type=_id, metavar="ID")
    erase = leaf(users, "erase", "erase an account and its data (cannot be undone)")
    erase.add_argument("user_id", type=_id, metavar="ID")
    erase.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    export = leaf(users, "export", "export an account's data as a zip")
    export.add_argument("user_id", type=_id, metavar="ID")
    export.add_argument("--out", metavar="FILE",
                        help="where to write the zip (default export-ID.zip; not "
                             "overwritten)")
    export.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="longest wait for a running shard to make it (600)")
    for name, text in (("limit", "limit an account to replying only"),
                       ("unlimit", "lift an account's limit (its counters start afresh)")):
        change = leaf(users, name, text)
        change.add_argument("user_id", type=_id, metavar="ID")
        change.add_argument("--note", default="", help="kept with the change")

    reports = actions.add_parser("reports", help="reports of users and messages") \
        .add_subparsers(dest="reports_action", metavar="REPORTS_ACTION", required=True)
    listing = leaf(reports, "list", "reports, oldest first (a page)")
    listing.add_argument("--status", choices=["open", "resolved"], default="open")
    listing.add_argument("--after", type=_id, default=0, metavar="ID",
                         help="the page after this report id")
    listing.add_argument("--limit", type=int, metavar="N", help="reports in the page (50)")
    resolve = leaf(reports, "resolve", "resolve a report")
    resolve.add_argument("report_id", type=_id, metavar="ID")
    resolve.add_argument("--action", required=True,
                         choices=["dismiss", "uphold", "limit", "unlimit"])
    resolve.add_argument("--note", default="", help="kept with the resolution")

    abuse = actions.add_parser("abuse", help="the abuse queue").add_subparsers(
        dest="abuse_action", metavar="ABUSE_ACTION", required=True)
    queue = leaf(abuse, "queue", "accounts limited or scoring for review (a page)")
    queue.add_argument("--after", type=_id, default=0, metavar="ID",
                       help="the page after this user id")
    queue.add_argument("--limit", type=int, metavar="N", help="accounts in the page (50)")

    media = actions.add_parser("media", help="uploaded media").add_subparsers(
        dest="media_action", metavar="MEDIA_ACTION", required=True)
    quarantine = leaf(media, "quarantine", "make content unavailable by its sha256, now "
                                           "and for future uploads (on this shard)")
    quarantine.add_argument("sha256", metavar="SHA256")
    quarantine.add_argument("--reason", required=True, help="why (kept with it)")


def command_name(args: argparse.Namespace) -> str:
    """The command as typed, for messages: "users erase", "status"."""
    group = str(args.command_group)
    sub = getattr(args, f"{group}_action", None)
    return f"{group} {sub}" if sub else group
