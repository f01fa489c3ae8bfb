"""The owner's side of deletion: delete for everyone or for me, the disappearing timer,
erasing a member, and what reads show of deleted, expired and hidden entries.

Every change here is a group-commit command on the conversation's owner (OwnerApi
delegates `DeleteMessage`, `SetDisappearing` and `EraseMember` here), so it runs in log
order with sends and works the same over the mesh and on a replica that took over: its
records are conversation-keyed and replicate like the log.

A deletion replaces the entry with its tombstone (domain/deletion.py) in place: the old
record is deleted and the tombstone put at the same key in one batch. The delete is what
`Store.write` notes for the purge (storage/purge.py), on the owner and on the replica that
applies the same batch. The dedup row stays, so a resend cannot bring the message back.
Media the entry carried lose its reference (`MediaService.release_message_refs`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from chatd.config import LimitsConfig
from chatd.domain import deletion, groups
from chatd.domain.models import Conversation, Message
from chatd.domain.rules import DELETED_CONTENT_TYPE, SYSTEM_CONTENT_TYPE
from chatd.errors import ChatdError
from chatd.pending import Pending
from chatd.protocol import frames
from chatd.protocol import owner as ops
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.owner import ConversationOwner
from chatd.storage import Batch, Store, records

if TYPE_CHECKING:
    from chatd.services.media import MediaService

#: Where event frames for users go (Delivery.publish): (user ids, frame).
FrameSink = Callable[[list[int], frames.OutFrame], None]

#: Log entries one erase step looks at (one batch each): the committer never holds one
#: huge batch for a long log.
ERASE_SCAN = 1024


class Deletions:
    def __init__(self, *, store: Store, owner: ConversationOwner, commands: Commands,
                 limits: LimitsConfig, clock: Clock, publish: FrameSink) -> None:
        self._store = store
        self._owner = owner
        self._commands = commands
        self._limits = limits
        self._clock = clock
        self._publish = publish
        #: Drops the references of deleted messages' media (set by the wiring).
        self.media: MediaService | None = None
        #: Called for every entry tombstoned, in its batch: what points at a message
        #: (reactions, edits, pins) goes with it (services/reactions.py, edits.py, pins.py).
        self.on_tombstone: list[Callable[[Batch, Conversation, Message], None]] = []

    # -- reads ----------------------------------------------------------------------------

    def retention_cutoff(self, now_ms: int) -> int:
        return deletion.retention_cutoff(self._limits.retention_days, now_ms)

    def shown(self, conversation_id: int, user_id: int,
              rows: list[Message]) -> list[Message]:
        """`rows` as `user_id` may read them now: due entries as their tombstones (the
        sweep may not have written them yet), entries they hid left out."""
        if not rows:
            return rows
        now = self._clock.now_ms()
        cutoff = self.retention_cutoff(now)
        hidden = self._hidden(conversation_id, user_id, rows[0].seq, rows[-1].seq)
        return [deletion.as_read(message, now, cutoff) for message in rows
                if message.seq not in hidden]

    def _hidden(self, conversation_id: int, user_id: int, low: int, high: int) -> set[int]:
        found = self._store.range(
            records.HIDDEN, records.triple(conversation_id, user_id, low),
            records.triple(conversation_id, user_id, high + 1), limit=high - low + 1)
        return {seq for (_, _, seq), _ in found}

    # -- delete for everyone, delete for me ------------------------------------------------

    def delete_message(self, command: ops.DeleteMessage) -> Pending[None]:
        conversation_id, actor, seq = command.conversation_id, command.actor_id, command.seq

        def apply(batch: Batch) -> None:
            conv = self._owner.get(conversation_id)
            message = deletion.readable_entry(conv, actor, seq,
                                              self._owner.entry(conversation_id, seq))
            if not command.for_everyone:
                batch.put(records.HIDDEN, (conversation_id, actor, seq), None)
                batch.after_commit.append(partial(
                    self._publish, [actor], frames.message_hidden_frame(conversation_id, seq)))
                return
            now = self._clock.now_ms()
            if not deletion.plan_delete_for_everyone(
                    conv, actor, message, now_ms=now, window_s=self._limits.delete_window_s,
                    retention_cutoff_ms=self.retention_cutoff(now)):
                return  # gone already: deleting it again changes nothing
            self.tombstone(batch, conv, message)
            # Devices that synced the message learn of it from the log, as of any entry.
            self._owner.append_system(batch, conv, actor, "message_deleted", seq=seq)
            batch.after_commit.append(partial(
                self._publish, list(conv.members),
                frames.message_deleted_frame(conversation_id, seq, actor)))

        return self._commands.enqueue(apply, conversation_id=conversation_id)

    def tombstone(self, batch: Batch, conv: Conversation, message: Message) -> None:
        """Replace a live entry with its tombstone; its media lose their reference."""
        key = (message.conversation_id, message.seq)
        self._owner.changing(batch, conv)
        batch.delete(records.MESSAGES, key)  # noted for the purge (storage/purge.py)
        self._owner.put_message(batch, deletion.tombstone_of(message))
        if message.expires_at:
            batch.delete(records.EXPIRIES, (message.expires_at, *key))
        if message.attachments and self.media is not None:
            self.media.release_message_refs(batch, message.conversation_id,
                                            message.sender_id, message.attachments)
        for hook in self.on_tombstone:
            hook(batch, conv, message)

    # -- disappearing messages -----------------------------------------------------------

    def set_disappearing(self, command: ops.SetDisappearing) -> Pending[Conversation]:
        seconds = None if command.disappearing_s == -1 else command.disappearing_s
        anyone = None if command.anyone_sets_timer == -1 else bool(command.anyone_sets_timer)

        def apply(batch: Batch) -> Conversation:
            conv = self._owner.get(command.conversation_id)
            deletion.plan_set_timer(conv, command.actor_id, seconds, anyone)
            actor = command.actor_id
            if anyone is not None and anyone != conv.anyone_sets_timer:
                conv.anyone_sets_timer = anyone
                batch.put(records.CONVERSATIONS, conv.conversation_id, conv)
                self._owner.append_system(batch, conv, actor, "timer_permission_set",
                                          anyone_sets_timer=anyone)
            if seconds is not None and seconds != conv.disappearing_s:
                conv.disappearing_s = seconds
                batch.put(records.CONVERSATIONS, conv.conversation_id, conv)
                # Entries appended after this one carry expires_at (ConversationOwner).
                self._owner.append_system(batch, conv, actor, "disappearing_set",
                                          disappearing_s=seconds)
            return conv

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    # -- erasing a member ------------------------------------------------------------------

    def erase_member(self, command: ops.EraseMember) -> Pending[None]:
        """Tombstone everything `user_id` sent, `ERASE_SCAN` entries of the log per batch,
        then remove them (`member_erased`) in the batch that reaches the head: each step
        is queued once the one before has landed, so other commands interleave."""
        result: Pending[None] = Pending()

        def step(after: int) -> None:
            try:
                pending = self._commands.enqueue(partial(self._erase_step, command, after),
                                                 conversation_id=command.conversation_id)
            except ChatdError as exc:
                result.set_error(exc)
                return
            pending.add_done_callback(landed)

        def landed(done: Pending[int | None]) -> None:
            if done.error is not None:
                result.set_error(done.error)
            elif done.result is None:
                result.set_result(None)
            else:
                step(done.result)

        step(0)
        return result

    def _erase_step(self, command: ops.EraseMember, after: int, batch: Batch) -> int | None:
        """One step: where the next starts, or None when the member is erased."""
        conv = self._owner.find(command.conversation_id)
        if conv is None:
            raise groups.unknown_conversation(command.conversation_id)
        user_id = command.user_id
        end = min(conv.written_seq, after + ERASE_SCAN)
        for message in self._owner.entries(conv, after=after, limit=end - after):
            if message.sender_id == user_id and message.content_type not in (
                    SYSTEM_CONTENT_TYPE, DELETED_CONTENT_TYPE):
                self.tombstone(batch, conv, message)
                if message.client_msg_id:
                    # No resend will come from an erased account: nothing of theirs stays.
                    batch.delete(records.DEDUP, (conv.conversation_id, user_id,
                                                 message.client_msg_id))
        if end < conv.written_seq:
            return end
        hidden = self._store.scan(records.HIDDEN, records.pair(conv.conversation_id, user_id),
                                  limit=ERASE_SCAN)
        for key, _ in hidden:
            batch.delete(records.HIDDEN, key)
        if len(hidden) == ERASE_SCAN:
            return end  # more hidden rows than one batch takes: the next step goes on
        if conv.is_member(user_id):
            self._owner.append_system(batch, conv, user_id, "member_erased",
                                      user_id=str(user_id))
            if conv.kind == "group":
                self._owner.groups.changed(user_id, -1)  # (limits.max_groups_per_user)
            del conv.members[user_id]
            conv.watermarks.pop(user_id, None)
            batch.delete(records.MEMBERS, (conv.conversation_id, user_id))
            batch.delete(records.USER_CONVERSATIONS, (user_id, conv.conversation_id))
            batch.delete(records.WATERMARKS, (conv.conversation_id, user_id))
        return None

    # -- the sweeper's commands (services/sweeper.py) ----------------------------------------

    def expire(self, due: list[tuple[int, int, int]], batch: Batch) -> int:
        """Tombstone the entries of `due` (expires_at, conversation, seq) that are still
        live with that expiry; how many. Expiry writes no system entry: every device
        knows the time and the entry's expires_at."""
        count = 0
        for expires_at, conversation_id, seq in due:
            batch.delete(records.EXPIRIES, (expires_at, conversation_id, seq))
            conv = self._owner.find(conversation_id)
            message = self._owner.entry(conversation_id, seq)
            if conv is None or message is None or message.expires_at != expires_at \
                    or deletion.is_deleted(message):
                continue
            self.tombstone(batch, conv, message)
            count += 1
        return count

    def retire(self, conversation_id: int, after: int, limit: int, cutoff_ms: int,
               batch: Batch) -> int:
        """Retention: tombstone the live entries after `after` (at most `limit` looked
        at) sent before `cutoff_ms`, up to the first younger one. Returns the seq up to
        which the log is past retention (the next pass starts after it)."""
        conv = self._owner.find(conversation_id)
        if conv is None:
            return after
        reached = after
        for message in self._owner.entries(conv, after=after, limit=limit):
            if message.ts >= cutoff_ms:
                break
            if message.content_type not in (SYSTEM_CONTENT_TYPE, DELETED_CONTENT_TYPE):
                self.tombstone(batch, conv, message)
            reached = message.seq
        return reached
