"""Direct conversations and groups: creation, membership, names.

Every change runs as a group-commit command against the owner's in-memory state and
writes a system entry into the conversation's own log, so history shows who joined, who
left, who was promoted and what the group was called, each at its seq.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatd.config import LimitsConfig
from chatd.domain import groups, rules
from chatd.domain.ids import SnowflakeGenerator, direct_conversation_id
from chatd.domain.models import Conversation, Member, Session, Watermark
from chatd.errors import Conflict
from chatd.services.accounts import AccountService
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.owner import ConversationOwner
from chatd.storage import Batch, records


@dataclass(frozen=True, slots=True)
class Created:
    conversation: Conversation
    created: bool


def _ids(user_ids: list[int]) -> list[str]:
    return [str(user_id) for user_id in user_ids]


class ConversationService:
    def __init__(self, *, owner: ConversationOwner, commands: Commands,
                 accounts: AccountService, ids: SnowflakeGenerator, clock: Clock,
                 limits: LimitsConfig) -> None:
        self._owner = owner
        self._commands = commands
        self._accounts = accounts
        self._ids = ids
        self._clock = clock
        self._limits = limits

    def _add_member(self, batch: Batch, conv: Conversation, user_id: int, member: Member) -> None:
        conv.members[user_id] = member
        batch.put(records.MEMBERS, (conv.conversation_id, user_id), member)
        batch.put(records.USER_CONVERSATIONS, (user_id, conv.conversation_id), None)

    async def open_direct(self, session: Session, peer_id: int) -> Created:
        """The one conversation between the caller and `peer_id` (the caller alone, for a
        note to self), created on first use."""
        self._accounts.get_user(peer_id)
        conversation_id = direct_conversation_id(session.user_id, peer_id)
        existing = self._owner.find(conversation_id)
        if existing is not None:
            return Created(self._check_direct(existing, session), created=False)

        def apply(batch: Batch) -> Created:
            conv = self._owner.find(conversation_id)
            if conv is not None:  # created by a command queued before this one
                return Created(self._check_direct(conv, session), created=False)
            now = self._clock.now_ms()
            conv = Conversation(conversation_id, "direct", "", session.user_id, now, last_ts=now)
            batch.put(records.CONVERSATIONS, conv.conversation_id, conv)
            for user_id in dict.fromkeys((session.user_id, peer_id)):
                self._add_member(batch, conv, user_id, Member("member", joined_seq=0))
            self._owner.remember(conv)
            self._owner.changing(batch, conv)
            return Created(conv, created=True)

        return await self._commands.submit(apply)

    @staticmethod
    def _check_direct(conv: Conversation, session: Session) -> Conversation:
        # Direct ids are 63-bit hashes of the pair; a clash with another conversation is
        # astronomically unlikely, but must never hand someone else's conversation out.
        if conv.kind != "direct" or not conv.is_member(session.user_id):
            raise Conflict("this pair's conversation id is taken; report this to the operator",
                           code="direct_id_clash")
        return conv

    async def create_group(self, session: Session, name: str,
                           member_ids: list[int]) -> Conversation:
        name = rules.clean_text(name, "name", max_length=rules.MAX_GROUP_NAME)
        others = [uid for uid in dict.fromkeys(member_ids) if uid != session.user_id]
        if len(others) + 1 > self._limits.max_group_members:
            raise Conflict(f"a group holds at most {self._limits.max_group_members} members",
                           code="group_full")
        self._accounts.require_users_exist(others)
        conversation_id = self._ids.next_id()
        self._owner.find(conversation_id)  # checks this shard owns it before any work

        def apply(batch: Batch) -> Conversation:
            now = self._clock.now_ms()
            conv = Conversation(conversation_id, "group", name, session.user_id, now, last_ts=now)
            batch.put(records.CONVERSATIONS, conv.conversation_id, conv)
            self._owner.remember(conv)
            self._owner.changing(batch, conv)
            # The creator joins at seq 1, the entry that creates the group.
            self._add_member(batch, conv, session.user_id, Member("admin", joined_seq=1))
            for user_id in others:
                self._add_member(batch, conv, user_id, Member("member", joined_seq=1))
            self._owner.append_system(batch, conv, session.user_id, "group_created",
                                      name=name, user_ids=_ids([session.user_id, *others]))
            return conv

        return await self._commands.submit(apply)

    async def add_members(self, session: Session, conversation_id: int,
                          user_ids: list[int]) -> Conversation:
        self._accounts.require_users_exist(user_ids)

        def apply(batch: Batch) -> Conversation:
            conv = self._owner.get(conversation_id)
            added = groups.plan_add(conv, session.user_id, user_ids,
                                    self._limits.max_group_members)
            if added:
                joined_seq = conv.head_seq + 1
                for user_id in added:
                    self._add_member(batch, conv, user_id, Member("member", joined_seq))
                    # Unread counts start at the entry that added them.
                    self._owner.set_watermark(batch, conv, user_id,
                                              Watermark(joined_seq - 1, joined_seq - 1))
                self._owner.append_system(batch, conv, session.user_id, "members_added",
                                          user_ids=_ids(added))
            return conv

        return await self._commands.submit(apply)

    async def remove_members(self, session: Session, conversation_id: int,
                             user_ids: list[int]) -> Conversation:
        def apply(batch: Batch) -> Conversation:
            conv = self._owner.get(conversation_id)
            removed = groups.plan_remove(conv, session.user_id, user_ids)
            if removed:
                # Written while they are still members, so their devices are told too.
                self._owner.append_system(batch, conv, session.user_id, "members_removed",
                                          user_ids=_ids(removed))
                for user_id in removed:
                    self._drop_member(batch, conv, user_id)
            return conv

        return await self._commands.submit(apply)

    def _drop_member(self, batch: Batch, conv: Conversation, user_id: int) -> None:
        del conv.members[user_id]
        conv.watermarks.pop(user_id, None)
        batch.delete(records.MEMBERS, (conv.conversation_id, user_id))
        batch.delete(records.USER_CONVERSATIONS, (user_id, conv.conversation_id))
        batch.delete(records.WATERMARKS, (conv.conversation_id, user_id))

    async def promote(self, session: Session, conversation_id: int,
                      user_ids: list[int]) -> Conversation:
        def apply(batch: Batch) -> Conversation:
            conv = self._owner.get(conversation_id)
            promoted = groups.plan_promote(conv, session.user_id, user_ids)
            if promoted:
                for user_id in promoted:
                    member = Member("admin", conv.members[user_id].joined_seq)
                    self._add_member(batch, conv, user_id, member)
                self._owner.append_system(batch, conv, session.user_id, "admins_added",
                                          user_ids=_ids(promoted))
            return conv

        return await self._commands.submit(apply)

    async def leave(self, session: Session, conversation_id: int) -> None:
        def apply(batch: Batch) -> None:
            conv = self._owner.get(conversation_id)
            successor = groups.plan_leave(conv, session.user_id)
            # The entry goes in while the leaver is still a member, under their name.
            self._owner.append_system(batch, conv, session.user_id, "member_left")
            self._drop_member(batch, conv, session.user_id)
            if successor is not None:
                member = Member("admin", conv.members[successor].joined_seq)
                self._add_member(batch, conv, successor, member)
                self._owner.append_system(batch, conv, session.user_id, "admins_added",
                                          user_ids=_ids([successor]))

        await self._commands.submit(apply)

    async def rename(self, session: Session, conversation_id: int, name: str) -> Conversation:
        name = rules.clean_text(name, "name", max_length=rules.MAX_GROUP_NAME)

        def apply(batch: Batch) -> Conversation:
            conv = self._owner.get(conversation_id)
            groups.plan_rename(conv, session.user_id)
            if name != conv.name:
                conv.name = name
                batch.put(records.CONVERSATIONS, conv.conversation_id, conv)
                self._owner.append_system(batch, conv, session.user_id, "renamed", name=name)
            return conv

        return await self._commands.submit(apply)
