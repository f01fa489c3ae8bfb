"""The home's side of blocking: each user's block list, on their home shard.

`blocks` rows (blocker, blocked) -> when live with the rest of the blocker's account (not
replicated). The list answers `GET /blocks` and the checks that are not about a direct
chat: group adds, and whose presence a connecting user may be shown. Whether two people
may write to each other is decided by their direct chat's owner, which keeps its own
per-direction flag (services/direct_requests.py), written after the row here.

Its `home.*` requests are added to `HomeApi`'s (services/context.py):

    home.block {user_id, peer_id}, home.unblock {user_id, peer_id} -> None
    home.blocks {user_id} -> [[blocked user, ms], ...]
    home.blocking {viewer, user_ids} -> the users (homed here) who block the viewer
    home.add_policy {actor, user_ids} -> [[user, "everyone" | "contacts" | "blocked"]]
    home.last_seen_of {user_id} -> ms, or None
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatd.services.accounts import AccountService
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.peer_bodies import ids_field as _ids
from chatd.services.peer_bodies import int_field as _id
from chatd.storage import Batch, Store, records

#: Users whose block lists are kept in memory (cleared past this).
_CACHE = 50_000


class BlockList:
    def __init__(self, *, store: Store, commands: Commands, clock: Clock,
                 accounts: AccountService) -> None:
        self._store = store
        self._commands = commands
        self._clock = clock
        self._accounts = accounts
        self._cache: dict[int, dict[int, int]] = {}
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "home.block": self._block, "home.unblock": self._unblock,
            "home.blocks": self._blocks, "home.blocking": self._blocking,
            "home.add_policy": self._add_policy, "home.last_seen_of": self._last_seen_of,
        }

    def forget_pending(self) -> None:
        """After a failed batch write: read the lists again from disk."""
        self._cache.clear()

    def of(self, user_id: int) -> dict[int, int]:
        """Who `user_id` blocks, and since when (ms)."""
        cached = self._cache.get(user_id)
        if cached is None:
            cached = {blocked: at for (_, blocked), at in
                      self._store.scan(records.BLOCKS, records.u64(user_id))}
            if len(self._cache) >= _CACHE:
                self._cache.clear()
            self._cache[user_id] = cached
        return cached

    def blocks(self, user_id: int, peer_id: int) -> bool:
        return peer_id in self.of(user_id)

    async def block(self, user_id: int, peer_id: int) -> None:
        now = self._clock.now_ms()

        def apply(batch: Batch) -> None:
            if peer_id not in self.of(user_id):
                batch.put(records.BLOCKS, (user_id, peer_id), now)
                # In memory at once: the next command (and check) sees it.
                self.of(user_id)[peer_id] = now

        await self._commands.submit(apply)

    async def unblock(self, user_id: int, peer_id: int) -> None:
        def apply(batch: Batch) -> None:
            if peer_id in self.of(user_id):
                batch.delete(records.BLOCKS, (user_id, peer_id))
                del self.of(user_id)[peer_id]

        await self._commands.submit(apply)

    # -- home.* requests ----------------------------------------------------------------------

    async def _block(self, body: dict[str, Any]) -> None:
        await self.block(_id(body, "user_id"), _id(body, "peer_id"))

    async def _unblock(self, body: dict[str, Any]) -> None:
        await self.unblock(_id(body, "user_id"), _id(body, "peer_id"))

    def _blocks(self, body: dict[str, Any]) -> list[list[int]]:
        return [[blocked, at] for blocked, at in sorted(
            self.of(_id(body, "user_id")).items(), key=lambda item: item[1])]

    def _blocking(self, body: dict[str, Any]) -> list[int]:
        viewer = _id(body, "viewer")
        return [user for user in _ids(body, "user_ids") if self.blocks(user, viewer)]

    def _add_policy(self, body: dict[str, Any]) -> list[list[Any]]:
        actor = _id(body, "actor")
        answer: list[list[Any]] = []
        for user in _ids(body, "user_ids"):
            if self.blocks(user, actor):
                answer.append([user, "blocked"])
            else:
                answer.append([user, self._accounts.get_user(user).groups_add])
        return answer

    def _last_seen_of(self, body: dict[str, Any]) -> int | None:
        last_seen: int | None = self._store.get(records.LAST_SEEN, _id(body, "user_id"))
        return last_seen

