"""Direct conversations and groups, from the client's side: check, then route.

Every change is an owner command (`chatd.protocol.owner`) run by the conversation's
owner shard (`services/owner_api.py`), which writes a system entry into the log, so
history shows who joined, who left, who was promoted and what the group was called,
each at its seq. What needs no conversation is checked here first: that the users
named exist (on their home shards), and a group's name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from chatd.config import LimitsConfig
from chatd.domain import rules
from chatd.domain.ids import SnowflakeGenerator, direct_conversation_id
from chatd.domain.models import Conversation, Created, Session
from chatd.errors import Conflict, NotFound, RateLimited
from chatd.protocol import owner as ops
from chatd.services.abuse_signals import AbuseSignals
from chatd.services.ratelimits import RateLimits
from chatd.services.routing import Router
from chatd.services.users import Users

if TYPE_CHECKING:
    from chatd.services.privacy import PrivacyService


class ConversationService:
    def __init__(self, *, router: Router, accounts: Users, ids: SnowflakeGenerator,
                 limits: LimitsConfig, ratelimits: RateLimits,
                 abuse: AbuseSignals | None = None,
                 privacy: PrivacyService | None = None) -> None:
        self._router = router
        #: Who may be added directly, who is invited instead (their `groups_add`).
        self._privacy = privacy
        self._accounts = accounts
        self._ids = ids
        self._limits = limits
        self._ratelimits = ratelimits
        #: Asked before anything new is started: a limited account may only reply.
        self._abuse = abuse

    async def open_direct(self, session: Session, peer_id: int,
                          address: str | None = None, encrypted: bool | None = None,
                          ) -> Created:
        """The one conversation between the caller and `peer_id` (the caller alone, for a
        note to self), created on first use. Only a creation counts against
        `new_conversations`; an existing one is handed out even past the limit."""
        await self._accounts.require_users_exist([peer_id])
        conversation_id = direct_conversation_id(session.user_id, peer_id)
        user_id = session.user_id
        if self._abuse is not None and peer_id != user_id:
            limitation = await self._abuse.limitation(user_id)
            if limitation is not None:
                # A limited account may still reply: a chat it already has opens as before.
                try:
                    existing: Conversation = await self._router.ask(
                        ops.View(conversation_id, user_id))
                except NotFound:
                    raise self._abuse.refusal(limitation) from None
                return Created(existing, created=False)
        try:
            self._ratelimits.take("new_conversations", account=user_id, address=address)
        except RateLimited as refusal:
            try:
                conv: Conversation = await self._router.ask(
                    ops.View(conversation_id, user_id))
            except NotFound:
                raise refusal from None  # it would be a new one: the limit is the answer
            return Created(conv, created=False)
        try:
            created: Created = await self._router.ask(ops.OpenDirect(
                conversation_id, user_id, peer_id,
                -1 if encrypted is None else int(encrypted)))
        except BaseException:
            self._ratelimits.refund("new_conversations", account=user_id, address=address)
            raise
        if not created.created:
            self._ratelimits.refund("new_conversations", account=user_id, address=address)
        return created

    async def create_group(self, session: Session, name: str,
                           member_ids: list[int], address: str | None = None,
                           encrypted: bool = False) -> Conversation:
        name = rules.clean_text(name, "name", max_length=rules.MAX_GROUP_NAME)
        others = [uid for uid in dict.fromkeys(member_ids) if uid != session.user_id]
        if len(others) + 1 > self._limits.max_group_members:
            raise Conflict(f"a group holds at most {self._limits.max_group_members} members",
                           code="group_full")
        await self._accounts.require_users_exist(others)
        if self._abuse is not None:
            await self._abuse.require_may_initiate(session.user_id)
        # Everyone named counts against `group_add`, added or invited: otherwise creating
        # groups would be a way around it.
        charges = [("group_create", 1.0), ("group_add", float(len(others)))]
        others, invited = await self._split(session, others)
        with self._charged(session.user_id, address, charges):
            conv: Conversation = await self._router.ask(
                ops.CreateGroup(self._ids.next_id(), session.user_id, name, others,
                                encrypted))
        if invited:
            await self._router.ask(ops.Invite(conv.conversation_id, session.user_id, invited))
        return conv

    async def _split(self, session: Session, user_ids: list[int]) -> tuple[list[int], list[int]]:
        """Who is added, who is invited (docs/privacy.md); without privacy, all added."""
        if self._privacy is None or not user_ids:
            return list(user_ids), []
        return await self._privacy.split_adds(session.user_id, user_ids)

    async def add_members(self, session: Session, conversation_id: int,
                          user_ids: list[int], address: str | None = None) -> Conversation:
        await self._accounts.require_users_exist(user_ids)
        if self._abuse is not None:
            await self._abuse.require_may_initiate(session.user_id)
        named = [uid for uid in dict.fromkeys(user_ids) if uid != session.user_id]
        added, invited = await self._split(session, user_ids)
        # Run even with nobody to add: the owner checks the caller is an admin first.
        with self._charged(session.user_id, address, [("group_add", float(len(named)))]):
            conv: Conversation = await self._router.ask(
                ops.AddMembers(conversation_id, session.user_id, added))
        if invited:
            await self._router.ask(ops.Invite(conversation_id, session.user_id, invited))
        return conv

    @contextlib.contextmanager
    def _charged(self, user_id: int, address: str | None,
                 charges: list[tuple[str, float]]) -> Iterator[None]:
        """Take every (bucket, cost) or none; all are given back if the body fails (the
        owner refused: nothing was created or added)."""
        taken: list[tuple[str, float]] = []
        try:
            for bucket, cost in charges:
                if cost > 0:
                    self._ratelimits.take(bucket, account=user_id, address=address,
                                          cost=cost)
                    taken.append((bucket, cost))
            yield
        except BaseException:
            for bucket, cost in taken:
                self._ratelimits.refund(bucket, account=user_id, address=address, cost=cost)
            raise

    async def remove_members(self, session: Session, conversation_id: int,
                             user_ids: list[int]) -> Conversation:
        conv: Conversation = await self._router.ask(
            ops.RemoveMembers(conversation_id, session.user_id, list(user_ids)))
        return conv

    async def promote(self, session: Session, conversation_id: int,
                      user_ids: list[int]) -> Conversation:
        conv: Conversation = await self._router.ask(
            ops.Promote(conversation_id, session.user_id, list(user_ids)))
        return conv

    async def leave(self, session: Session, conversation_id: int) -> None:
        await self._router.ask(ops.Leave(conversation_id, session.user_id))

    async def set_photo(self, session: Session, conversation_id: int,
                        media_id: int) -> tuple[Conversation, int]:
        """Set (0: remove) a group's photo; returns the conversation and the media id it
        showed before."""
        result: tuple[Conversation, int] = await self._router.ask(
            ops.SetGroupPhoto(conversation_id, session.user_id, media_id))
        return result

    async def set_disappearing(self, session: Session, conversation_id: int,
                               disappearing_s: int | None,
                               anyone_sets_timer: bool | None,
                               address: str | None = None) -> Conversation:
        """Set the disappearing-messages timer and/or (groups) who may change it; None
        leaves either as it is. Each change is an entry in the log: the `messages`
        bucket, as a message."""
        self._ratelimits.take("messages", account=session.user_id, address=address)
        conv: Conversation = await self._router.ask(ops.SetDisappearing(
            conversation_id, session.user_id,
            -1 if disappearing_s is None else disappearing_s,
            -1 if anyone_sets_timer is None else int(anyone_sets_timer)))
        return conv

    async def rename(self, session: Session, conversation_id: int, name: str) -> Conversation:
        name = rules.clean_text(name, "name", max_length=rules.MAX_GROUP_NAME)
        conv: Conversation = await self._router.ask(
            ops.Rename(conversation_id, session.user_id, name))
        return conv
