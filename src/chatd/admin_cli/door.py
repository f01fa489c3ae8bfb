"""What `chatd admin` asks of a shard, whichever way it reaches it.

Both doors answer with the JSON forms of the admin REST routes (docs/api.md), so the
commands (commands.py) and what they print (render.py) are written once: the online door
(online.py) returns the routes' answers, the offline door (offline.py) renders the
same service results with the routes' own model functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol


def partial_path(out: Path) -> Path:
    """Where a file for `out` is written before it is renamed into place: beside it (the
    same filesystem), created empty and owner-only (an export is personal data)."""
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    partial.touch(mode=0o600, exist_ok=False)
    return partial


class Refused(Exception):
    """The shard refused or could not do what was asked (exit status 1)."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.message}"


class OnlineOnly(Exception):
    """A command the offline door does not do (exit status 2, with the reason)."""


class Door(Protocol):
    #: Where the commands act, for messages: "http://…" or "the stopped shard a at DIR".
    where: str
    #: Whether the door is a running shard (erase then finishes what it can at once).
    online: bool

    async def list_users(self, handle: str, after: int, limit: int | None) -> Any: ...

    async def show_user(self, user_id: int) -> Any: ...

    async def set_active(self, user_id: int, active: bool) -> Any: ...

    async def erase(self, user_id: int) -> Any: ...

    async def export(self, user_id: int, out: Path, timeout: float) -> int: ...  # noqa: ASYNC109  # the wait for a running shard to make the export

    async def reports(self, status: str, after: int, limit: int | None) -> Any: ...

    async def resolve(self, report_id: int, action: str, note: str) -> Any: ...

    async def abuse_queue(self, after: int, limit: int | None) -> Any: ...

    async def set_limited(self, user_id: int, limited: bool, note: str) -> Any: ...

    async def quarantine(self, sha256: str, reason: str) -> None: ...

    async def ranges(self) -> Any: ...

    async def promote(self, range_of: str) -> Any: ...

    async def rebalance(self) -> Any: ...
