"""Privacy from the client's side: settings, blocks, message requests, invites and what
one user may see of another (docs/privacy.md).

Where each piece lives: settings on the user's record (their home, through `Users`);
block lists on the blocker's home (services/blocks.py); the request and block state of
a direct chat on its owner (services/direct_requests.py); invites on the group's owner
(services/invites.py). This module asks the right one and combines the answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import trio

from chatd.domain import privacy as rules
from chatd.domain.ids import direct_conversation_id
from chatd.domain.models import Conversation, Session, User
from chatd.errors import BadRequest, ChatdError
from chatd.protocol import owner as ops
from chatd.services.blocks import BlockList
from chatd.services.owner_api import OwnerApi
from chatd.services.routing import Router
from chatd.services.users import Users


@dataclasses.dataclass(frozen=True, slots=True)
class PairState:
    """A direct chat's state as one of the pair sees it."""

    status: str
    requested_by: int
    blocked_by: tuple[int, ...]

    @property
    def contacts(self) -> bool:
        return self.status == rules.ACCEPTED and not self.blocked_by


class PrivacyService:
    def __init__(self, *, router: Router, users: Users, blocks: BlockList,
                 owner_api: OwnerApi) -> None:
        self._router = router
        self._users = users
        self._blocks = blocks
        self._owner_api = owner_api

    # -- settings ---------------------------------------------------------------------------

    async def change_settings(self, session: Session, *, last_seen: str | None,
                              profile: str | None, groups_add: str | None,
                              read_receipts: bool | None) -> User:
        return await self._users.update_profile(
            session, display_name=None, status_text=None, read_receipts=read_receipts,
            last_seen=last_seen, profile=profile, groups_add=groups_add)

    # -- blocks ------------------------------------------------------------------------------

    async def _home(self, user_id: int, method: str, body: dict[str, Any]) -> Any:
        return await self._users.ask_home(user_id, method, body, self._blocks.requests[method])

    async def block(self, session: Session, peer_id: int, blocked: bool = True) -> None:
        """The row on the blocker's home first (GET /blocks, group adds, presence), then
        the flag on their direct chat's owner (sends, opens). A failure between leaves
        the row: a retry sets the flag (both are idempotent)."""
        user_id = session.user_id
        if peer_id == user_id:
            raise BadRequest("you cannot block yourself", code="cannot_block_self")
        await self._users.require_users_exist([peer_id])
        await self._home(user_id, "home.block" if blocked else "home.unblock",
                         {"user_id": user_id, "peer_id": peer_id})
        await self._router.ask(ops.SetBlock(direct_conversation_id(user_id, peer_id),
                                            user_id, peer_id, blocked))

    async def blocks(self, session: Session) -> list[tuple[int, int]]:
        rows = await self._home(session.user_id, "home.blocks", {"user_id": session.user_id})
        return [(int(user), int(at)) for user, at in rows]

    async def blocked_list(self, user_id: int) -> set[int]:
        """Who `user_id` blocks; empty when their home cannot say (presence then goes
        by the direct chats' flags alone)."""
        with contextlib.suppress(ChatdError):
            rows = await self._home(user_id, "home.blocks", {"user_id": user_id})
            return {int(user) for user, _ in rows}
        return set()

    async def blocking(self, viewer: int, user_ids: set[int]) -> set[int]:
        """Which of `user_ids` block `viewer`, asking each home once. A home that cannot
        be asked counts as blocking (privacy fails closed)."""
        by_home: dict[str, list[int]] = {}
        for user_id in user_ids:
            by_home.setdefault(self._router.home_of_user(user_id), []).append(user_id)
        found: set[int] = set()

        async def ask(users: list[int]) -> None:
            try:
                answer = await self._home(users[0], "home.blocking",
                                          {"viewer": viewer, "user_ids": users})
            except ChatdError:
                found.update(users)
                return
            found.update(int(user) for user in answer)

        async with trio.open_nursery() as nursery:
            for users in by_home.values():
                nursery.start_soon(ask, users)
        return found

    # -- message requests ---------------------------------------------------------------------

    async def answer_request(self, session: Session, conversation_id: int,
                             answer: str) -> Conversation:
        conv: Conversation = await self._router.ask(
            ops.AnswerRequest(conversation_id, session.user_id, answer))
        return conv

    async def pair_state(self, user_id: int, peer_id: int) -> PairState:
        status, requested_by, blocked_by = await self._router.ask(ops.DirectStatus(
            direct_conversation_id(user_id, peer_id), user_id, peer_id))
        return PairState(str(status), int(requested_by), tuple(blocked_by))

    # -- what one user sees of another -----------------------------------------------------------

    async def profile_for(self, viewer: int, user: User) -> tuple[User, int | None]:
        """`user` as `viewer` may see it (status text and photo per their `profile`
        setting), and their last seen time if `viewer` may see it (else None)."""
        if viewer == user.user_id:
            return user, None
        pair = await self.pair_state(viewer, user.user_id)
        # A request's sender sees nothing of the recipient until it is accepted; a
        # blocked user sees nothing of the blocker.
        shut_out = user.user_id in pair.blocked_by or (
            pair.status in (rules.PENDING, rules.DECLINED) and pair.requested_by == viewer)
        shown = user
        if shut_out or not rules.shows(user.profile_visibility, pair.contacts):
            shown = rules.reduced(user)
        last_seen = None
        if not shut_out and rules.shows(user.last_seen_setting, pair.contacts):
            last_seen = await self._home(user.user_id, "home.last_seen_of",
                                         {"user_id": user.user_id})
        return shown, last_seen

    # -- groups -------------------------------------------------------------------------------

    async def split_adds(self, actor: int, user_ids: list[int]) -> tuple[list[int], list[int]]:
        """Who `actor` may add to a group directly and who gets an invite instead (their
        `groups_add` is "contacts" and `actor` is not one). Users who block `actor` are
        left out of both."""
        by_home: dict[str, list[int]] = {}
        for user_id in dict.fromkeys(user_ids):
            by_home.setdefault(self._router.home_of_user(user_id), []).append(user_id)
        policy: dict[int, str] = {}
        for users in by_home.values():
            for user, setting in await self._home(users[0], "home.add_policy",
                                                  {"actor": actor, "user_ids": users}):
                policy[int(user)] = str(setting)
        add: list[int] = []
        invite: list[int] = []
        for user_id in dict.fromkeys(user_ids):
            setting = policy.get(user_id, "blocked")
            if setting == "everyone":
                add.append(user_id)
            elif setting == "contacts":
                pair = await self.pair_state(actor, user_id)
                (add if pair.contacts else invite).append(user_id)
        return add, invite

    async def invites(self, session: Session) -> list[tuple[int, str, int, int]]:
        """The caller's unanswered invites, asked of every shard (each owner indexes the
        invites to its groups); an unreachable shard's are left out."""
        found: list[tuple[int, str, int, int]] = []
        query = ops.InvitesOf(0, session.user_id)

        async def ask(shard: str) -> None:
            if self._router.is_local(shard):
                found.extend(self._owner_api.invites_of(query))
                return
            with contextlib.suppress(ChatdError):
                found.extend(await self._router.remote(shard, query).wait())

        async with trio.open_nursery() as nursery:
            for shard in self._router.shards:
                nursery.start_soon(ask, shard)
        return sorted(found, key=lambda row: row[3], reverse=True)

    async def answer_invite(self, session: Session, conversation_id: int,
                            accept: bool) -> Conversation | None:
        conv: Conversation | None = await self._router.ask(
            ops.AnswerInvite(conversation_id, session.user_id, accept))
        return conv
