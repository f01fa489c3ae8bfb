"""Each `chatd admin` command once, against either door: what it asks, what it prints.

Exit status: 0 done; 1 the shard refused or could not do it (its error code and message
are printed), an erase not confirmed, a running shard's data directory given; 2 a usage
error (argparse's own, no admin token, a command the offline door does not do, a
directory that is no shard, a config that does not fit the data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from chatd.admin_cli import render
from chatd.admin_cli.arguments import DEFAULT_URL, TOKEN_VARIABLE, command_name
from chatd.admin_cli.door import Door, OnlineOnly, Refused


class Declined(Exception):
    """The operator did not confirm."""


#: A command: (door, args) -> (answer as JSON, its text for people).
Command = Callable[[Door, argparse.Namespace], Awaitable[tuple[Any, str]]]


async def _status(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.ranges()
    return answer, render.ranges(answer)


async def _promote(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.promote(args.range_of)
    return answer, json.dumps(answer, indent=2)


async def _rebalance(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.rebalance()
    return answer, json.dumps(answer, indent=2)


async def _users_list(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.list_users(args.handle, args.after, args.limit)
    return answer, render.users_list(answer)


async def _users_show(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.show_user(args.user_id)
    return answer, render.user_detail(answer)


async def _users_deactivate(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.set_active(args.user_id, False)
    return answer, render.user_detail(answer)


async def _users_reactivate(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.set_active(args.user_id, True)
    return answer, render.user_detail(answer)


async def _users_erase(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    if not args.yes:
        user = (await door.show_user(args.user_id))["user"]
        print(f"Erase user {user['user_id']} (@{user['handle'] or '-'}, "
              f"\"{user['display_name']}\") on {door.where}? Their profile, uploads and "
              "messages are deleted; this cannot be undone. Type yes to erase: ",
              end="", file=sys.stderr, flush=True)
        answer = await trio.to_thread.run_sync(sys.stdin.readline)
        if answer.strip().lower() != "yes":
            raise Declined("not erased: nothing was done (give --yes to erase without "
                           "being asked)")
    erased = await door.erase(args.user_id)
    return erased, render.erased(args.user_id, erased)


async def _users_export(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    out = Path(args.out or f"export-{args.user_id}.zip")
    written = await door.export(args.user_id, out, args.timeout)
    answer = {"user_id": str(args.user_id), "file": str(out), "bytes": written}
    return answer, render.exported(args.user_id, answer)


async def _users_limit(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.set_limited(args.user_id, True, args.note)
    return answer, render.limit(answer)


async def _users_unlimit(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.set_limited(args.user_id, False, args.note)
    return answer, render.limit(answer)


async def _reports_list(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.reports(args.status, args.after, args.limit)
    return answer, render.reports(answer)


async def _reports_resolve(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.resolve(args.report_id, args.action, args.note)
    return answer, render.resolved(answer)


async def _abuse_queue(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    answer = await door.abuse_queue(args.after, args.limit)
    return answer, render.abuse_queue(answer)


async def _media_quarantine(door: Door, args: argparse.Namespace) -> tuple[Any, str]:
    sha256 = args.sha256.lower()  # as sha256sum prints it; the route takes only this form
    await door.quarantine(sha256, args.reason)
    answer = {"sha256": sha256, "quarantined": True}
    return answer, render.quarantined(sha256, door.where)


COMMANDS: dict[str, Command] = {
    "status": _status, "promote": _promote, "rebalance": _rebalance,
    "users list": _users_list, "users show": _users_show,
    "users deactivate": _users_deactivate, "users reactivate": _users_reactivate,
    "users erase": _users_erase, "users export": _users_export,
    "users limit": _users_limit, "users unlimit": _users_unlimit,
    "reports list": _reports_list, "reports resolve": _reports_resolve,
    "abuse queue": _abuse_queue, "media quarantine": _media_quarantine,
}


def run(args: argparse.Namespace) -> int:
    name = command_name(args)
    command = COMMANDS[name]

    def fail(message: str, status: int) -> int:
        print(f"chatd admin {name}: {message}", file=sys.stderr)
        return status

    if name == "users export":
        out = Path(args.out or f"export-{args.user_id}.zip")
        if out.exists():
            return fail(f"{out} exists: give another --out", 2)
        if not out.parent.is_dir():
            return fail(f"{out.parent} is not a directory", 2)

    async def act(door: Door) -> int:
        try:
            answer, text = await command(door, args)
        except Refused as exc:
            return fail(str(exc), 1)
        except Declined as exc:
            return fail(str(exc), 1)
        except OnlineOnly as exc:
            return fail(f"not offline: {exc}", 2)
        print(json.dumps(answer, indent=2) if args.json else text)
        return 0

    if args.data_dir is not None:
        return _offline(args, act, fail)
    if args.config is not None:
        return fail("--config goes with --data-dir (offline); online, the shard has its own",
                    2)
    token = args.admin_token or os.environ.get(TOKEN_VARIABLE, "")
    if not token:
        return fail(f"give the shard's admin token (${TOKEN_VARIABLE}, or --admin-token), "
                    "or act offline on a stopped shard with --data-dir", 2)
    return trio.run(_online, args.url or DEFAULT_URL, token, act)


async def _online(url: str, token: str, act: Callable[[Door], Awaitable[int]]) -> int:
    from chatd.admin_cli.online import OnlineDoor, client

    async with client(url, token) as http:
        return await act(OnlineDoor(http, url))


def _offline(args: argparse.Namespace, act: Callable[[Door], Awaitable[int]],
             fail: Callable[[str, int], int]) -> int:
    # Imported here: the services load RocksDB and the web models, which the online
    # door does not need.
    from chatd.admin_cli.offline import NotAShard, ShardRunning, run_offline
    from chatd.config import ConfigError

    if args.admin_token:
        return fail("--admin-token goes with --url; offline, access to the data directory "
                    "is the authority", 2)
    try:
        return trio.run(run_offline, Path(args.data_dir), args.config, act)
    except ShardRunning as exc:
        return fail(str(exc), 1)
    except NotAShard as exc:
        return fail(str(exc), 2)
    except ConfigError as exc:
        return fail(f"invalid setting: {exc}", 2)

