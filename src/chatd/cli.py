"""The `chatd` command."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from chatd import __version__, admin_cli, backup_commands
from chatd.config import Config, ConfigError, load, parse_listen

log = logging.getLogger("chatd")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatd",
        description="chatd: a self-hostable chat server. `chatd serve` runs one shard; with "
                    "no options it listens on 127.0.0.1:8080 and keeps data in ./var/chatd.")
    parser.add_argument("--version", action="version", version=f"chatd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the server (one shard)",
        description="Run one chatd shard until SIGINT or SIGTERM. Settings come from defaults, "
                    "then the config file, then CHATD_<SECTION>_<KEY> environment variables, "
                    "then these flags.")
    serve.add_argument("--config", metavar="FILE",
                       help="TOML config file (default: $CHATD_CONFIG, else none; "
                            "see conf/chatd.toml)")
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="address for clients (default 127.0.0.1:8080; port 0 picks one)")
    serve.add_argument("--data", metavar="DIR",
                       help="data directory (default ./var/chatd, or $CHATD_DATA)")
    serve.add_argument("--shard", metavar="NAME",
                       help="which of the config's [[cluster.shards]] this process is "
                            "(overrides cluster.shard; see conf/cluster-3.toml)")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
    chat = commands.add_parser(
        "chat", help="talk from this terminal",
        description="Log in to a chatd server and chat from the terminal. The password comes "
                    "from $CHATD_PASSWORD or a prompt. Type /help once connected.")
    chat.add_argument("--url", default="http://127.0.0.1:8080", help="the server")
    chat.add_argument("--handle", required=True, help="your handle")
    chat.add_argument("--register", action="store_true",
                      help="create the account first if it does not exist")
    chat.add_argument("--no-e2e", action="store_true",
                      help="no end-to-end encryption (by default it is on when a passphrase "
                           "for the keys is given: $CHATD_E2E_PASSPHRASE or a prompt)")
    admin_cli.add_parser(commands)
    backup_commands.add_parsers(commands.add_parser)
    commands.add_parser(
        "bench", help="run the benchmark harness (python -m bench; see docs/benchmarks.md)",
        add_help=False)
    return parser


def _raise_open_file_limit() -> None:
    """Every WebSocket is a file descriptor: take the hard limit, not the soft default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    if args.listen is not None:
        parse_listen(args.listen)
        overrides.setdefault("server", {})["listen"] = args.listen
    if args.data is not None:
        overrides.setdefault("storage", {})["data_dir"] = args.data
    if args.shard is not None:
        overrides.setdefault("cluster", {})["shard"] = args.shard
    return overrides


async def _serve_until_signalled(config: Config) -> None:
    """Serve until SIGINT or SIGTERM. SIGHUP rereads the TLS certificate and key (and
    no longer ends the process, as it did by default)."""
    from chatd.server import RunningServer, serve  # imported late: `chatd --help` stays fast

    shutdown = trio.Event()
    # Opened first, so a signal during startup is acted on once the shard is up.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            running: RunningServer = await nursery.start(
                partial(serve, config, shutdown=shutdown))
            async for signum in signals:
                if signum == signal.SIGHUP:
                    running.reload_certificate()
                    continue
                log.info("received %s; shutting down", signal.Signals(signum).name)
                shutdown.set()
                break


def _bench(arguments: list[str]) -> int:
    """Run the benchmark harness of the source checkout this package was installed from.

    bench/ is not installed with chatd (it measures chatd; it is not part of it), so it is
    looked for next to src/. Its worker processes (`python -m bench.worker`) find it the
    same way, through PYTHONPATH."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "bench" / "__main__.py").is_file():
        print("chatd: `chatd bench` runs from a source checkout (pip install -e '.[bench]'); "
              "this installation has no bench/", file=sys.stderr)
        return 2
    sys.path.insert(0, str(checkout))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(checkout), os.environ.get("PYTHONPATH")) if part)
    try:
        from bench.__main__ import main as bench_main
    except ImportError as exc:
        print(f"chatd: the benchmark harness needs `pip install -e '.[bench]'` ({exc})",
              file=sys.stderr)
        return 2
    result: int = bench_main(arguments)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        return _bench(arguments[1:])
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "admin":
        return admin_cli.run(args)
    if args.command == "chat":
        from chatd.chat import password_from_environment_or_prompt, run_chat

        password = password_from_environment_or_prompt()
        return trio.run(partial(run_chat, args.url, args.handle, password, args.register,
                                not args.no_e2e))
    if args.command == "backup":
        return backup_commands.run_backup(args)
    if args.command == "restore":
        return backup_commands.run_restore(args)
    import os

    try:
        config = load(args.config or os.environ.get("CHATD_CONFIG") or None,
                      overrides=_overrides(args))
    except ConfigError as exc:
        print(f"chatd: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: with etcd that is a line per lease keepalive.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _raise_open_file_limit()
    try:
        # Checked before anything is opened: a hypercorn whose internals chatd does not
        # know would otherwise fail later, and less clearly.
        from chatd.web.hypercorn_adapter import require_supported_hypercorn

        require_supported_hypercorn()
    except ImportError as exc:  # UnsupportedHypercorn is one
        print(f"chatd: {exc}", file=sys.stderr)
        return 1
    try:
        trio.run(partial(_serve_until_signalled, config))
    except Exception as raised:
        # A startup failure arrives wrapped in the exception groups of the nurseries it
        # crossed; what matters is the one error inside.
        error = _sole_error(raised)
        if isinstance(error, ConfigError):  # a TLS certificate that cannot be loaded
            print(f"chatd: invalid setting: {error}", file=sys.stderr)
            return 2
        if isinstance(error, OSError):
            where = error.filename or config.server.listen
            print(f"chatd: cannot serve on {where}: {error.strerror or error}",
                  file=sys.stderr)
            return 1
        if "lock" in str(error).lower():
            print(f"chatd: the data directory {config.storage.data_dir} is in use by another "
                  f"process ({error})", file=sys.stderr)
            return 1
        raise
    return 0


def _sole_error(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
