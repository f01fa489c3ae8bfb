"""`chatd backup` and `chatd restore`: their arguments and what they print.

Exit status: 0 done; 1 the backup or restore failed (server unreachable or refusing,
a backup that does not check out); 2 a usage error (no admin token, a target directory
that is not empty). The admin token is read from $CHATD_ADMIN_TOKEN (or --admin-token,
which other users of the box can see in `ps`) and is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the storage package loads RocksDB: not for `chatd --help`
    from chatd.storage.backup_format import Manifest

TOKEN_VARIABLE = "CHATD_ADMIN_TOKEN"


def add_parsers(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Add both commands, given the `add_parser` of chatd's subcommands."""
    backup = add_parser(
        "backup", help="take an online backup of a running shard",
        description="Ask a running shard (`chatd serve`) for a consistent snapshot of its "
                    "data and write it, checked, into DIR (new or empty). The shard keeps "
                    "serving. Needs the shard's server.admin_token, from "
                    f"${TOKEN_VARIABLE} or --admin-token. See docs/operations.md.")
    backup.add_argument("directory", metavar="DIR", help="where to write the backup")
    backup.add_argument("--url", default="http://127.0.0.1:8080",
                        help="the shard to back up (default http://127.0.0.1:8080)")
    backup.add_argument("--admin-token", metavar="TOKEN",
                        help=f"the shard's server.admin_token (default ${TOKEN_VARIABLE}; "
                             "prefer the variable: arguments are visible in `ps`)")
    backup.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="longest wait for the server at any point (default 60)")
    restore = add_parser(
        "restore", help="restore a backup into a new data directory",
        description="Check the backup in DIR against its manifest, copy it into DATA (new "
                    "or empty), open the copy to check it again, and print what it holds. "
                    "Start the shard on DATA under the same shard name and ring "
                    "(docs/operations.md).")
    restore.add_argument("directory", metavar="DIR", help="a backup written by `chatd backup`")
    restore.add_argument("--data", metavar="DATA", required=True,
                         help="the data directory to create (must not exist or be empty)")


def run_backup(args: argparse.Namespace) -> int:
    from chatd.backup_client import BackupDownloadFailed, download_backup

    token = args.admin_token or os.environ.get(TOKEN_VARIABLE, "")
    if not token:
        print(f"chatd backup: needs the shard's admin token: set ${TOKEN_VARIABLE} (or pass "
              "--admin-token)", file=sys.stderr)
        return 2
    directory = Path(args.directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        print(f"chatd backup: {directory} is not empty: give a new directory for each backup",
              file=sys.stderr)
        return 2
    try:
        done = download_backup(args.url, token, directory, timeout=args.timeout)
    except BackupDownloadFailed as exc:
        print(f"chatd backup: {exc}", file=sys.stderr)
        return 1
    print(f"backed up shard {done.manifest.shard} from {args.url} into {directory}")
    _describe(done.manifest, done.total_bytes)
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from chatd.storage.backup_format import BackupInvalid
    from chatd.storage.restore import RestoreRefused, restore

    try:
        done = restore(Path(args.directory), Path(args.data))
    except RestoreRefused as exc:
        print(f"chatd restore: {exc}", file=sys.stderr)
        return 2
    except BackupInvalid as exc:
        print(f"chatd restore: refused: {exc}", file=sys.stderr)
        return 1
    print(f"restored shard {done.manifest.shard} into {done.data_dir}")
    _describe(done.manifest, done.total_bytes)
    print(f"start it with: chatd serve --data {done.data_dir} --shard {done.manifest.shard} "
          "(and the config it ran under: the ring must be the same)")
    return 0


def _describe(manifest: Manifest, total_bytes: int) -> None:
    taken = datetime.fromtimestamp(manifest.created_at_ms / 1000, UTC)
    media = sum(1 for entry in manifest.files if entry.path.startswith("media/"))
    print(f"  taken      {taken.isoformat(timespec='seconds')} by chatd "
          f"{manifest.chatd_version}")
    print(f"  ring       {manifest.ring_signature} (shards {', '.join(manifest.shards)})")
    print(f"  database   {len(manifest.files) - media} files, RocksDB sequence "
          f"{manifest.rocksdb_sequence}")
    print(f"  logs       {manifest.summary.conversations} conversations, "
          f"{manifest.summary.log_entries} entries")
    print(f"  media      {media} files")
    print(f"  size       {total_bytes:,} bytes")
