"""The owner's side of group invites: who was invited to a group instead of added.

A user whose `groups_add` setting (contacts only) does not let an admin add them gets an
invite instead. Invites live on the group's owner, keyed by the conversation (`invites`,
and the index `user_invites` by invitee), so they replicate with the group; the invitee
is told live (`invite` frame), lists them (`GET /invites`, asked of every shard like the
conversation list) and accepts (joins, with an `invite_accepted` entry in the log) or
declines (the invite goes).
"""

from __future__ import annotations

from collections.abc import Callable

from chatd.config import LimitsConfig
from chatd.domain import groups
from chatd.domain.models import Conversation, Member, Watermark
from chatd.domain.privacy import GroupInvite
from chatd.errors import Conflict
from chatd.pending import Pending
from chatd.protocol import frames
from chatd.protocol import owner as ops
from chatd.services.commands import Commands
from chatd.services.owner import ConversationOwner
from chatd.storage import Batch, Store, records

#: Adds a member's rows (OwnerApi._add_member).
AddMember = Callable[[Batch, Conversation, int, Member], None]
#: Where frames for users go (services/delivery.py `publish`).
FrameSink = Callable[[list[int], frames.OutFrame], None]


def invite_frame(conv: Conversation, invited_by: int) -> frames.OutFrame:
    return frames.OutFrame({"type": "invite", "conversation_id": str(conv.conversation_id),
                            "name": conv.name, "invited_by": str(invited_by)})


class GroupInvites:
    def __init__(self, *, store: Store, owner: ConversationOwner, commands: Commands,
                 limits: LimitsConfig, now_ms: Callable[[], int], add_member: AddMember,
                 publish: FrameSink) -> None:
        self._store = store
        self._owner = owner
        self._commands = commands
        self._limits = limits
        self._now_ms = now_ms
        self._add_member = add_member
        self._publish = publish
        # Invites written by batches that have not landed, and ones deleted so (a
        # command reads what the ones before it did).
        self._unlanded: dict[tuple[int, int], GroupInvite | None] = {}

    def forget_all(self) -> None:
        self._unlanded.clear()

    def _get(self, conversation_id: int, user_id: int) -> GroupInvite | None:
        key = (conversation_id, user_id)
        if key in self._unlanded:
            return self._unlanded[key]
        return self._store.get(records.INVITES, key)

    def _set(self, batch: Batch, key: tuple[int, int], invite: GroupInvite | None) -> None:
        if invite is None:
            batch.delete(records.INVITES, key)
            batch.delete(records.USER_INVITES, (key[1], key[0]))
        else:
            batch.put(records.INVITES, key, invite)
            batch.put(records.USER_INVITES, (key[1], key[0]), None)
        self._unlanded[key] = invite

        def landed() -> None:
            if self._unlanded.get(key, False) is invite:
                del self._unlanded[key]

        batch.after_commit.append(landed)

    def joined(self, batch: Batch, conversation_id: int, user_id: int) -> None:
        """The user joined the group (by any path): an invite they had is answered by
        that. Left standing, it would let them back in after the admins removed them."""
        key = (conversation_id, user_id)
        if self._get(*key) is not None:
            self._set(batch, key, None)

    def invite(self, command: ops.Invite) -> Pending[list[int]]:
        def apply(batch: Batch) -> list[int]:
            conv = self._owner.get(command.conversation_id)
            # The same rule as adding: the group's admins (and not past its size).
            targets = groups.plan_add(conv, command.actor_id, command.user_ids,
                                      self._limits.max_group_members)
            invited = []
            new = []  # told: an invite they already have is not announced again
            for user_id in targets:
                key = (conv.conversation_id, user_id)
                if self._get(*key) is None:
                    invite = GroupInvite(conv.conversation_id, user_id, command.actor_id,
                                         self._now_ms())
                    self._set(batch, key, invite)
                    new.append(user_id)
                invited.append(user_id)
            if new:
                frame = invite_frame(conv, command.actor_id)
                batch.after_commit.append(lambda: self._publish(new, frame))
            return invited

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    def answer(self, command: ops.AnswerInvite) -> Pending[Conversation | None]:
        def apply(batch: Batch) -> Conversation | None:
            key = (command.conversation_id, command.user_id)
            invite = self._get(*key)
            conv = self._owner.find(command.conversation_id)
            if invite is None or conv is None:
                # As for a conversation one is not in: nothing is revealed.
                raise groups.unknown_conversation(command.conversation_id)
            if command.accept and not conv.is_member(command.user_id):
                # Checked before anything changes: joining by invite is an add.
                joined = self._owner.groups.of(command.user_id)
                if joined >= self._limits.max_groups_per_user:
                    raise Conflict(f"you are in {joined} groups on this server, the most one "
                                   "may be in (limits.max_groups_per_user); leave one first",
                                   code="too_many_groups")
            self._set(batch, key, None)
            if not command.accept:
                return None
            if conv.is_member(command.user_id):
                return conv
            if len(conv.members) + 1 > self._limits.max_group_members:
                raise Conflict(f"a group holds at most {self._limits.max_group_members} "
                               "members", code="group_full")
            joined_seq = conv.written_seq + 1
            self._add_member(batch, conv, command.user_id, Member("member", joined_seq))
            self._owner.set_watermark(batch, conv, command.user_id,
                                      Watermark(joined_seq - 1, joined_seq - 1))
            self._owner.append_system(batch, conv, command.user_id, "invite_accepted",
                                      invited_by=str(invite.invited_by))
            return conv

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    def invites_of(self, query: ops.InvitesOf,
                   serves: Callable[[int], bool]) -> list[tuple[int, str, int, int]]:
        rows = []
        for (_, conversation_id), _ in self._store.scan(records.USER_INVITES,
                                                         records.u64(query.user_id)):
            invite = self._get(conversation_id, query.user_id)
            conv = self._owner.find(conversation_id) if serves(conversation_id) else None
            if invite is not None and conv is not None:
                rows.append((conversation_id, conv.name, invite.invited_by,
                             invite.created_at))
        return rows
