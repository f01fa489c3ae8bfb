"""The owner shard's side of every conversation operation: typed commands in, results out.

Each method takes one value from `chatd.protocol.owner` and runs it against this shard's
`ConversationOwner`: commands as group-commit commands (answered once durable, through a
`Pending`), queries at once. The router (`services/routing.py`) calls these directly when
this shard owns the conversation, and the mesh handler calls the same methods for a peer,
so a command behaves the same wherever the client is connected.

Membership is checked here, at the single writer, for every command and query: the
shard a client is connected to checks nothing about conversations it does not own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from chatd.config import LimitsConfig
from chatd.domain import deletion, groups, replies, rules, targets
from chatd.domain.models import (
    Conversation,
    Created,
    HistoryPage,
    Member,
    Message,
    SendResult,
    Watermark,
)
from chatd.domain.ratelimit import KeyedRateLimiter
from chatd.domain.targets import Annotation
from chatd.errors import BadRequest, Conflict, NotFound, Unavailable
from chatd.pending import Pending
from chatd.protocol import frames
from chatd.protocol import owner as ops
from chatd.services.commands import Commands
from chatd.services.log import ConversationLog
from chatd.services.owner import ConversationOwner
from chatd.services.receipts import Receipts
from chatd.storage import Batch, records

if TYPE_CHECKING:
    from chatd.services.deletion import Deletions
    from chatd.services.direct_requests import DirectRequests
    from chatd.services.edits import Edits
    from chatd.services.invites import GroupInvites
    from chatd.services.media import MediaService
    from chatd.services.pins import Pins
    from chatd.services.reactions import Reactions, Summary

#: Where an owner hands ephemeral frames (typing) for users: (user ids, frame).
EphemeralSink = Callable[[list[int], frames.OutFrame], None]


def _ids(user_ids: list[int]) -> list[str]:
    return [str(user_id) for user_id in user_ids]


class OwnerApi:
    def __init__(self, *, owner: ConversationOwner, log: ConversationLog, commands: Commands,
                 receipts: Receipts, limits: LimitsConfig, now_ms: Callable[[], int],
                 publish_ephemeral: EphemeralSink) -> None:
        self._owner = owner
        self._log = log
        self._commands = commands
        self._receipts = receipts
        self._limits = limits
        self._now_ms = now_ms
        self._publish_ephemeral = publish_ephemeral
        #: About the most one answer listing conversations or history holds.
        self.page_bytes = PAGE_BYTES
        self._typing_limit = KeyedRateLimiter(per_second=TYPING_PER_SECOND, burst=TYPING_BURST)
        #: Whether this shard acts as a conversation's owner now (replication moves
        #: ranges between shards); every command and query is checked against it.
        self.serves: Callable[[int], bool] = lambda _conversation_id: True
        #: Records the references of messages that carry media (services/media.py).
        self.media: MediaService | None = None
        #: Message requests and blocks of direct chats, and group invites (set by the
        #: wiring: services/direct_requests.py, services/invites.py).
        self.requests: DirectRequests | None = None
        self.invites: GroupInvites | None = None
        #: Deletion, disappearing messages, erasure; what reads show of them
        #: (services/deletion.py; set by the wiring).
        self.deletions: Deletions | None = None
        #: Reactions, edits and pins (services/reactions.py, edits.py, pins.py; set by
        #: the wiring): their commands, and what history pages show of them.
        self.reactions: Reactions | None = None
        self.edits: Edits | None = None
        self.pins: Pins | None = None

    def run(self, command: ops.OwnerCommand) -> Any:
        """Run any command or query: a `Pending` for commands, a value for queries."""
        if not isinstance(command, ops.ConversationsOf | ops.InvitesOf) \
                and not self.serves(command.conversation_id):
            raise Unavailable("this shard does not serve that conversation now (its range "
                              "is moving between shards); retry shortly", code="not_owner")
        handler = getattr(self, _HANDLERS[type(command)])
        return handler(command)

    # -- queries ----------------------------------------------------------------------------

    def member_view(self, conversation_id: int, user_id: int) -> Conversation:
        """The conversation, if `user_id` is a member; 404 alike whether it does not exist
        or they are not in it."""
        conv = self._owner.get(conversation_id)
        groups.require_member(conv, user_id)
        return conv

    def view(self, query: ops.View) -> Conversation:
        return self.member_view(query.conversation_id, query.user_id)

    def history(self, query: ops.History) -> HistoryPage:
        """A page of the log in ascending seq order: the oldest after `after`, else the
        newest before `before` (or at the head). Members see entries from their joining on."""
        conv = self.member_view(query.conversation_id, query.user_id)
        limit = query.limit or self._limits.history_page_default
        if not 1 <= limit <= self._limits.history_page_max:
            raise BadRequest(f"limit: must be within 1..{self._limits.history_page_max}")
        after = None if query.after == -1 else query.after
        before = None if query.before == -1 else query.before
        for name, value in (("after", after), ("before", before)):
            if value is not None and value < 0:
                raise BadRequest(f"{name}: must not be negative")
        floor = max(after or 0, conv.members[query.user_id].joined_seq - 1)
        newest_first = after is None
        # Entries written but not yet acknowledged (on their way to the replica) are on
        # this disk already; nobody may see them before their sender is answered.
        before = conv.head_seq + 1 if before is None else min(before, conv.head_seq + 1)
        skipped = 0
        while True:
            page = self._history_page(query, floor, before, limit, newest_first)
            if self.deletions is None:
                return _within_bytes_annotated(
                    self._annotated(conv, query.user_id, HistoryPage(
                        self._quoted(conv, page.messages), page.has_more)),
                    query.max_bytes, newest_first)
            shown = self.deletions.shown(query.conversation_id, query.user_id, page.messages)
            if shown or not page.has_more:
                return _within_bytes_annotated(
                    self._annotated(conv, query.user_id, HistoryPage(
                        self._quoted(conv, shown), page.has_more)),
                    query.max_bytes, newest_first)
            # Every entry of the page was hidden by this user ("delete for me"): an
            # empty page that says there is more would leave the client nowhere to page
            # from, so read on, but not without bound (a user can hide a long run, and
            # this runs on the owner's loop): past HIDDEN_SKIP entries the last one read
            # is given as what it is to this user, a tombstone, to page on from.
            edge = page.messages[0] if newest_first else page.messages[-1]
            skipped += len(page.messages)
            if skipped >= HIDDEN_SKIP:
                return HistoryPage([deletion.tombstone_of(edge)], has_more=True)
            if newest_first:
                before = edge.seq
            else:
                floor = edge.seq

    def _annotated(self, conv: Conversation, user_id: int, page: HistoryPage) -> HistoryPage:
        """The page with its messages' reactions and latest bodies: one range scan of
        each aggregate over the page's seqs (domain/annotations.py)."""
        if not page.messages or self.reactions is None or self.edits is None:
            return page
        low, high = page.messages[0].seq, page.messages[-1].seq
        reactions = self.reactions.of_page(conv, user_id, low, high)
        edits = self.edits.of_page(conv, low, high)
        notes = {}
        for message in page.messages:
            seq = message.seq
            if (seq in reactions or seq in edits) and targets.is_message(message):
                edit = edits.get(seq)
                body = edit.body.get("body") if edit is not None \
                    and isinstance(edit.body, dict) else None
                notes[seq] = Annotation(reactions.get(seq, {}),
                                        body if isinstance(body, str | bytes) else None,
                                        edit.ts if edit is not None else 0)
        return HistoryPage(page.messages, page.has_more, notes) if notes else page

    def _history_page(self, query: ops.History, floor: int, before: int, limit: int,
                      newest_first: bool) -> HistoryPage:
        if before <= floor + 1:
            return HistoryPage([], has_more=False)
        # One extra row tells whether there is more without a second scan.
        rows = self._log.read(query.conversation_id, after=floor, before=before,
                              limit=limit + 1, newest_first=newest_first)
        has_more = len(rows) > limit
        if has_more:
            rows = rows[1:] if newest_first else rows[:limit]
        # A page of big messages asked across the mesh is cut short (at least one is
        # always given): it must fit a frame, and the client pages on as it would anyway.
        kept = (_within_bytes(reversed(rows) if newest_first else rows, query.max_bytes)
                if query.max_bytes else len(rows))
        if kept < len(rows):
            rows = rows[len(rows) - kept:] if newest_first else rows[:kept]
            has_more = True
        return HistoryPage(rows, has_more)

    def status(self, query: ops.Status) -> list[tuple[int, int, int]]:
        """(member, delivered seq, read seq) of every member who was there at `seq`."""
        conv = self.member_view(query.conversation_id, query.user_id)
        seq = query.seq
        # Entries before the caller joined are as unknown to them as those never written.
        if not max(1, conv.members[query.user_id].joined_seq) <= seq <= conv.head_seq:
            raise NotFound(f"no message with seq {seq} in this conversation that you can "
                           "read", code="unknown_message")
        # Until a request is accepted (and across a block) the other side's receipts are
        # not shown, here either.
        shown = self.requests is None or self.requests.receipts_flow(conv)
        return [(user_id, conv.watermark(user_id).delivered_seq,
                 conv.watermark(user_id).read_seq)
                if shown or user_id == query.user_id else (user_id, 0, 0)
                for user_id, member in conv.members.items() if member.joined_seq <= seq]

    def typing(self, query: ops.Typing) -> bool:
        """Relay a typing notice to the other members; False when rate limited (dropped)."""
        conv = self.member_view(query.conversation_id, query.user_id)
        key = f"{query.user_id}:{query.conversation_id}"
        if self._typing_limit.try_acquire(key, trio.current_time()) > 0:
            return False
        if self.requests is not None and not self.requests.relays_typing(conv, query.user_id):
            return True  # dropped as if relayed: typing is presence
        others = [user_id for user_id in conv.members if user_id != query.user_id]
        self._publish_ephemeral(others,
                                frames.typing_frame(query.conversation_id, query.user_id))
        return True

    def read_log(self, query: ops.ReadLog) -> tuple[list[Message], int]:
        """A catch-up read, outside any commit: (entries, head seq). A non-member (removed
        meanwhile) gets ([], -1): their session stops following the conversation."""
        conv = self._owner.find(query.conversation_id)
        if conv is None or not conv.is_member(query.user_id):
            return [], -1
        # Never before the entry that (last) added them, whatever position the session
        # asks from: a cursor from an earlier membership, or one a client made up, must
        # not open the history from before they joined.
        after = max(query.after, conv.members[query.user_id].joined_seq - 1)
        skipped = 0
        while True:
            rows, head = self._read_log_page(query, conv, after)
            if self.deletions is None:
                return self._quoted(conv, rows), head
            shown = self.deletions.shown(query.conversation_id, query.user_id, rows)
            if shown or not rows or head == rows[-1].seq:
                # (Nothing shown of a complete read: its head tells the session to move
                # past what this user hid.)
                return self._quoted(conv, shown), head
            # All hidden, and more to read: the session must not take an empty answer
            # below the head for "nothing more". Bounded as history's is (HIDDEN_SKIP).
            skipped += len(rows)
            if skipped >= HIDDEN_SKIP:
                return [deletion.tombstone_of(rows[-1])], head
            after = rows[-1].seq

    def _read_log_page(self, query: ops.ReadLog, conv: Conversation,
                       after: int) -> tuple[list[Message], int]:
        rows = self._log.read(query.conversation_id, after=after, before=conv.head_seq + 1,
                              limit=query.limit, newest_first=False)
        complete = len(rows) < query.limit
        size = 0
        for taken, message in enumerate(rows):
            size += _body_size(message)
            if size >= query.max_bytes and taken + 1 < len(rows):
                # Enough for one write: the rest is read again after it has gone.
                rows = rows[:taken + 1]
                complete = False
                break
        if complete:
            # Everything durable was read: that is the head to report (the head in
            # memory may include appends whose batch has not landed, which the reader
            # would otherwise ask for again and again until it does; it is offered them
            # live once it lands).
            return rows, rows[-1].seq if rows else after
        return rows, conv.head_seq

    def conversations_of(self, query: ops.ConversationsOf
                         ) -> tuple[list[tuple[Conversation, int]], int]:
        """The conversations owned here that the user is in, each with the seq the
        device's delivery starts at: a page of about `PAGE_BYTES` (members lists of big
        groups add up) and where the next page starts (0: no more)."""
        result: list[tuple[Conversation, int]] = []
        size = 0
        for conversation_id in self._owner.conversation_ids_of(query.user_id):
            if conversation_id <= query.after or not self.serves(conversation_id):
                # (A replica holds the index rows of the ranges it backs: those are
                # their owner's to list.)
                continue
            if size >= self.page_bytes:
                return result, result[-1][0].conversation_id
            conv = self._owner.find(conversation_id)
            if conv is None or not conv.is_member(query.user_id):
                continue
            size += 200 + 40 * len(conv.members)
            floor = max(1, conv.members[query.user_id].joined_seq)
            acked = query.cursors.get(conversation_id)
            if acked is None:
                # Never acked here: a new device, or a conversation joined since. A device
                # is owed what was written after it came to be, not the whole history.
                start = self._first_newer_than(conv, floor, query.device_id)
            else:
                start = max(acked + 1, floor)
            result.append((conv, start))
        return result, 0

    def _first_newer_than(self, conv: Conversation, floor: int, snowflake: int) -> int:
        """The first seq >= floor whose message id is above `snowflake` (ids grow with
        seq and carry their creation time), by binary search over point reads."""
        low, high = floor, conv.head_seq + 1
        while low < high:
            middle = (low + high) // 2
            message = self._log.entry(conv.conversation_id, middle)
            if message is not None and message.message_id > snowflake:
                high = middle
            else:
                low = middle + 1
        return low

    # -- messages and receipts ----------------------------------------------------------------

    def send(self, command: ops.Send) -> Pending[SendResult]:
        conversation_id = command.conversation_id
        sender_id = command.sender_id
        requests = self.requests
        conv = self.member_view(conversation_id, sender_id)
        if conv.encrypted:
            # (Fixed at creation: no later command can change it, so once is enough.)
            rules.check_encrypted_content(command.content_type)
        if requests is not None:
            requests.check_send(conv, sender_id)
        if command.reply_to:
            self._reply_target(conv, sender_id, command.reply_to)

        def apply(batch: Batch) -> SendResult:
            conv = self._owner.get(conversation_id)
            # Checked again here: a removal may have been queued since the first check.
            groups.require_member(conv, sender_id)
            previous = self._owner.previous_send(conversation_id, sender_id,
                                                 command.client_msg_id)
            if previous is not None:
                return previous
            if requests is not None:
                requests.check_send(conv, sender_id)
            attachments = tuple(command.attachments)
            # Checked again in the batch: the target's state as the commands before this
            # one left it (deleted meanwhile: the live quote says so).
            quote = replies.quote_of(self._latest(conv, self._reply_target(
                conv, sender_id, command.reply_to))) \
                if command.reply_to else None
            message = self._owner.append(
                batch, conv, sender_id=sender_id, sender_device=command.sender_device,
                content_type=command.content_type, body=command.body,
                client_msg_id=command.client_msg_id, attachments=attachments,
                reply_to=command.reply_to, forwarded=command.forwarded, quote=quote,
                mentions=replies.kept_mentions(conv, sender_id, command.mentions))
            if attachments and self.media is not None:
                # Who may download them: who can read this message (services/media.py).
                self.media.record_audience(batch, conversation_id, message.seq,
                                           tuple(conv.members), attachments)
            if requests is not None:
                requests.appended(batch, conv, message)
            return SendResult(message.message_id, conversation_id, message.seq, message.ts)

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    # -- replies (domain/replies.py) -----------------------------------------------------------

    def _reply_target(self, conv: Conversation, sender_id: int, seq: int) -> Message:
        """The entry a reply answers, as reads show it now: 404 unless the sender can
        read it (from their joining on, acknowledged)."""
        if seq < 0:
            raise BadRequest("reply_to: must not be negative", code="invalid_field")
        target = deletion.readable_entry(conv, sender_id, seq,
                                         self._owner.entry(conv.conversation_id, seq))
        return self._as_read(target)

    def _as_read(self, message: Message) -> Message:
        now = self._now_ms()
        return deletion.as_read(message, now, deletion.retention_cutoff(
            self._limits.retention_days, now))

    def _quoted(self, conv: Conversation, rows: list[Message]) -> list[Message]:
        """`rows` with the quote of each reply made from its target as it reads now (a
        point read per target not in the page itself, and a scan of its edits)."""
        if not any(message.reply_to for message in rows):
            return rows
        in_page = {message.seq: message for message in rows}
        result = []
        for message in rows:
            if message.reply_to:
                target = in_page.get(message.reply_to) or self._log.entry(
                    conv.conversation_id, message.reply_to)
                quote = replies.quote_of(self._latest(conv, self._as_read(target))) \
                    if target is not None else None
                message = dataclasses.replace(message, quote=quote)
            result.append(message)
        return result

    def _latest(self, conv: Conversation, target: Message) -> Message:
        """The target with its latest body when it was edited (services/edits.py): a
        quote shows what the message says now, as its history does."""
        if self.edits is None or not targets.is_message(target):
            return target
        edit = self.edits.of_page(conv, target.seq, target.seq).get(target.seq)
        body = edit.body.get("body") if edit is not None and isinstance(edit.body, dict) \
            else None
        return dataclasses.replace(target, body=body) if isinstance(body, str | bytes) \
            else target

    def checked_seq(self, conversation_id: int, user_id: int, seq: int) -> Conversation:
        conv = self.member_view(conversation_id, user_id)
        if seq < 0:
            raise BadRequest("seq: must not be negative", code="invalid_field")
        if seq > conv.head_seq:
            raise BadRequest(f"seq: the conversation's last seq is {conv.head_seq}",
                             code="seq_out_of_range")
        return conv

    def acknowledge(self, command: ops.Acknowledge) -> None:
        """Move the user's delivered watermark, as a hint: memory now, the row with the
        next batch (docs/architecture.md, "Delivery hints")."""
        conv = self.checked_seq(command.conversation_id, command.user_id, command.seq)
        current = conv.watermark(command.user_id)
        mark = current.advanced(delivered=command.seq)
        if mark != current:
            self._owner.move_watermark_hint(conv, command.user_id, mark)
            self._receipts.moved(conv, command.user_id, current, mark, command.shares_read)

    def mark_read(self, command: ops.MarkRead) -> Pending[Watermark]:
        conversation_id, user_id, seq = command.conversation_id, command.user_id, command.seq
        self.checked_seq(conversation_id, user_id, seq)

        def apply(batch: Batch) -> Watermark:
            conv = self._owner.get(conversation_id)
            groups.require_member(conv, user_id)
            current = conv.watermark(user_id)
            mark = current.advanced(read=seq)
            if mark != current:
                self._owner.set_watermark(batch, conv, user_id, mark)
                batch.after_commit.append(
                    lambda: self._receipts.moved(conv, user_id, current, mark,
                                                 command.shares_read))
            return mark

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    # -- conversations and groups -------------------------------------------------------------

    def _add_member(self, batch: Batch, conv: Conversation, user_id: int, member: Member) -> None:
        if conv.kind == "group" and user_id not in conv.members:
            self._owner.groups.changed(user_id, +1)
            if self.invites is not None:
                self.invites.joined(batch, conv.conversation_id, user_id)
        conv.members[user_id] = member
        batch.put(records.MEMBERS, (conv.conversation_id, user_id), member)
        batch.put(records.USER_CONVERSATIONS, (user_id, conv.conversation_id), None)

    def _drop_member(self, batch: Batch, conv: Conversation, user_id: int) -> None:
        if conv.kind == "group":
            self._owner.groups.changed(user_id, -1)
        del conv.members[user_id]
        conv.watermarks.pop(user_id, None)
        batch.delete(records.MEMBERS, (conv.conversation_id, user_id))
        batch.delete(records.USER_CONVERSATIONS, (user_id, conv.conversation_id))
        batch.delete(records.WATERMARKS, (conv.conversation_id, user_id))

    def open_direct(self, command: ops.OpenDirect) -> Pending[Created]:
        conversation_id = command.conversation_id
        existing = self._owner.find(conversation_id)
        if existing is not None:
            _check_encryption(existing, command.encrypted)
            return Pending.done(Created(self._check_direct(existing, command.user_id),
                                        created=False))
        requests = self.requests
        if requests is not None:
            requests.check_open(conversation_id, command.user_id)

        def apply(batch: Batch) -> Created:
            conv = self._owner.find(conversation_id)
            if conv is not None:  # created by a command queued before this one
                _check_encryption(conv, command.encrypted)
                return Created(self._check_direct(conv, command.user_id), created=False)
            if requests is not None:  # a block may have been queued since
                requests.check_open(conversation_id, command.user_id)
            now = self._now_ms()
            conv = Conversation(conversation_id, "direct", "", command.user_id, now,
                                last_ts=now, encrypted=command.encrypted == 1)
            batch.put(records.CONVERSATIONS, conv.conversation_id, conv)
            for user_id in dict.fromkeys((command.user_id, command.peer_id)):
                self._add_member(batch, conv, user_id, Member("member", joined_seq=0))
            self._owner.remember(conv)
            self._owner.changing(batch, conv)
            if requests is not None:
                requests.opened(batch, conv, command.user_id, command.peer_id)
            return Created(conv, created=True)

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    def _check_groups_cap(self, actor_id: int, joining: list[int]) -> None:
        """Refuse (before anything changes) when one of `joining` is in as many groups
        owned here as limits.max_groups_per_user allows."""
        cap = self._limits.max_groups_per_user
        for user_id in joining:
            count = self._owner.groups.of(user_id)
            if count < cap:
                continue
            if user_id == actor_id:
                raise Conflict(f"you are in {count} groups on this server, the most one may "
                               "be in (limits.max_groups_per_user); leave one first",
                               code="too_many_groups")
            # How many groups someone else is in is theirs to know: not said.
            raise Conflict(f"user {user_id} is in as many groups as one may be; they must "
                           "leave one first", code="too_many_groups")

    @staticmethod
    def _check_direct(conv: Conversation, user_id: int) -> Conversation:
        # Direct ids are 63-bit hashes of the pair; a clash with another conversation is
        # astronomically unlikely, but must never hand someone else's conversation out.
        if conv.kind != "direct" or not conv.is_member(user_id):
            raise Conflict("this pair's conversation id is taken; report this to the operator",
                           code="direct_id_clash")
        return conv

    def create_group(self, command: ops.CreateGroup) -> Pending[Conversation]:
        name = rules.clean_text(command.name, "name", max_length=rules.MAX_GROUP_NAME)
        creator = command.creator_id
        others = [uid for uid in dict.fromkeys(command.member_ids) if uid != creator]
        if len(others) + 1 > self._limits.max_group_members:
            raise Conflict(f"a group holds at most {self._limits.max_group_members} members",
                           code="group_full")
        if self._owner.find(command.conversation_id) is not None:
            raise Conflict("that group id is taken", code="conversation_exists")

        def apply(batch: Batch) -> Conversation:
            self._check_groups_cap(creator, [creator, *others])
            now = self._now_ms()
            conv = Conversation(command.conversation_id, "group", name, creator, now,
                                last_ts=now, encrypted=command.encrypted)
            batch.put(records.CONVERSATIONS, conv.conversation_id, conv)
            self._owner.remember(conv)
            self._owner.changing(batch, conv)
            # The creator joins at seq 1, the entry that creates the group.
            self._add_member(batch, conv, creator, Member("admin", joined_seq=1))
            for user_id in others:
                self._add_member(batch, conv, user_id, Member("member", joined_seq=1))
            self._owner.append_system(batch, conv, creator, "group_created",
                                      name=name, user_ids=_ids([creator, *others]))
            return conv

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    def add_members(self, command: ops.AddMembers) -> Pending[Conversation]:
        def apply(batch: Batch) -> Conversation:
            conv = self._owner.get(command.conversation_id)
            added = groups.plan_add(conv, command.actor_id, command.user_ids,
                                    self._limits.max_group_members)
            self._check_groups_cap(command.actor_id, added)
            if added:
                joined_seq = conv.written_seq + 1
                for user_id in added:
                    self._add_member(batch, conv, user_id, Member("member", joined_seq))
                    # Unread counts start at the entry that added them.
                    self._owner.set_watermark(batch, conv, user_id,
                                              Watermark(joined_seq - 1, joined_seq - 1))
                self._owner.append_system(batch, conv, command.actor_id, "members_added",
                                          user_ids=_ids(added))
            return conv

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    def remove_members(self, command: ops.RemoveMembers) -> Pending[Conversation]:
        def apply(batch: Batch) -> Conversation:
            conv = self._owner.get(command.conversation_id)
            removed = groups.plan_remove(conv, command.actor_id, command.user_ids)
            if removed:
                # Written while they are still members, so their devices are told too.
                self._owner.append_system(batch, conv, command.actor_id, "members_removed",
                                          user_ids=_ids(removed))
                for user_id in removed:
                    self._drop_member(batch, conv, user_id)
            return conv

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    def promote(self, command: ops.Promote) -> Pending[Conversation]:
        def apply(batch: Batch) -> Conversation:
            conv = self._owner.get(command.conversation_id)
            promoted = groups.plan_promote(conv, command.actor_id, command.user_ids)
            if promoted:
                for user_id in promoted:
                    member = Member("admin", conv.members[user_id].joined_seq)
                    self._add_member(batch, conv, user_id, member)
                self._owner.append_system(batch, conv, command.actor_id, "admins_added",
                                          user_ids=_ids(promoted))
            return conv

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    def leave(self, command: ops.Leave) -> Pending[None]:
        def apply(batch: Batch) -> None:
            conv = self._owner.get(command.conversation_id)
            successor = groups.plan_leave(conv, command.user_id)
            # The entry goes in while the leaver is still a member, under their name.
            self._owner.append_system(batch, conv, command.user_id, "member_left")
            self._drop_member(batch, conv, command.user_id)
            if successor is not None:
                member = Member("admin", conv.members[successor].joined_seq)
                self._add_member(batch, conv, successor, member)
                self._owner.append_system(batch, conv, command.user_id, "admins_added",
                                          user_ids=_ids([successor]))

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    def rename(self, command: ops.Rename) -> Pending[Conversation]:
        name = rules.clean_text(command.name, "name", max_length=rules.MAX_GROUP_NAME)

        def apply(batch: Batch) -> Conversation:
            conv = self._owner.get(command.conversation_id)
            groups.plan_rename(conv, command.actor_id)
            if name != conv.name:
                conv.name = name
                batch.put(records.CONVERSATIONS, conv.conversation_id, conv)
                self._owner.append_system(batch, conv, command.actor_id, "renamed", name=name)
            return conv

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)


    def set_group_photo(self, command: ops.SetGroupPhoto) -> Pending[tuple[Conversation, int]]:
        """The media service counted the new photo already (services/media.py)."""

        def apply(batch: Batch) -> tuple[Conversation, int]:
            conv = self._owner.get(command.conversation_id)
            groups.plan_rename(conv, command.actor_id)  # the same rule: a group's admins
            previous = conv.photo_media_id
            if command.media_id != previous:
                conv.photo_media_id = command.media_id
                batch.put(records.CONVERSATIONS, conv.conversation_id, conv)
                self._owner.append_system(batch, conv, command.actor_id, "photo_changed",
                                          media_id=str(command.media_id or ""))
            return conv, previous

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)


    # -- privacy (services/direct_requests.py, services/invites.py) ---------------------------

    def _requests(self) -> DirectRequests:
        if self.requests is None:
            raise Unavailable("message requests are not wired on this shard")
        return self.requests

    def _invites(self) -> GroupInvites:
        if self.invites is None:
            raise Unavailable("group invites are not wired on this shard")
        return self.invites

    def answer_request(self, command: ops.AnswerRequest) -> Pending[Conversation]:
        return self._requests().answer(command)

    def set_block(self, command: ops.SetBlock) -> Pending[None]:
        return self._requests().set_block(command)

    def direct_status(self, query: ops.DirectStatus) -> list[Any]:
        return self._requests().status(query)

    def invite(self, command: ops.Invite) -> Pending[list[int]]:
        return self._invites().invite(command)

    def answer_invite(self, command: ops.AnswerInvite) -> Pending[Conversation | None]:
        return self._invites().answer(command)

    def invites_of(self, query: ops.InvitesOf) -> list[tuple[int, str, int, int]]:
        return self._invites().invites_of(query, self.serves)

    def add_member(self, batch: Batch, conv: Conversation, user_id: int,
                   member: Member) -> None:
        """For services/invites.py: a member's rows, as every add writes them."""
        self._add_member(batch, conv, user_id, member)
    # -- deletion, disappearing messages, erasure (services/deletion.py) --------------------

    def delete_message(self, command: ops.DeleteMessage) -> Pending[None]:
        assert self.deletions is not None
        return self.deletions.delete_message(command)

    def set_disappearing(self, command: ops.SetDisappearing) -> Pending[Conversation]:
        assert self.deletions is not None
        return self.deletions.set_disappearing(command)

    def erase_member(self, command: ops.EraseMember) -> Pending[None]:
        assert self.deletions is not None
        return self.deletions.erase_member(command)

    # -- reactions, edits, pins (services/reactions.py, edits.py, pins.py) -------------------

    def react(self, command: ops.React) -> Pending[Summary]:
        assert self.reactions is not None
        return self.reactions.react(command)

    def edit(self, command: ops.Edit) -> Pending[tuple[int, int]]:
        assert self.edits is not None
        return self.edits.edit(command)

    def edit_history(self, query: ops.EditHistory) -> list[tuple[int, object, int]]:
        assert self.edits is not None
        self.member_view(query.conversation_id, query.user_id)
        return self.edits.history(query)

    def pin(self, command: ops.Pin) -> Pending[None]:
        assert self.pins is not None
        return self.pins.pin(command)


#: Typing notices: a burst of 3, then one every 2 s per (user, conversation).
TYPING_BURST = 3
TYPING_PER_SECOND = 0.5

#: The most entries a history page or a catch-up read skips because the reader hid them
#: ("delete for me") before it answers with a tombstone of the last one to page on from.
HIDDEN_SKIP = 5_000

#: About the most an answer that lists conversations, or a page of history, holds: it
#: must fit a mesh frame (cluster.max_frame_bytes, 1 MiB by default) with room to spare.
PAGE_BYTES = 256 * 1024


def _within_bytes(rows: Iterable[Message], limit: int) -> int:
    """How many of `rows`, in that order, fit `limit` bytes (at least one)."""
    size = count = 0
    for message in rows:
        size += _body_size(message)
        if count and size > limit:
            break
        count += 1
    return count


def _within_bytes_annotated(page: HistoryPage, max_bytes: int,
                            newest_first: bool) -> HistoryPage:
    """A page that crosses the mesh, cut again once its edited bodies are counted too
    (a page of short messages each edited to a long one must still fit a frame)."""
    if not max_bytes or not page.annotations:
        return page
    notes = page.annotations

    def size(message: Message) -> int:
        note = notes.get(message.seq)
        edited = len(note.body) if note is not None and note.body is not None else 0
        return _body_size(message) + edited

    rows = page.messages
    total = count = 0
    for message in reversed(rows) if newest_first else rows:
        total += size(message)
        if count and total > max_bytes:
            break
        count += 1
    if count == len(rows):
        return page
    kept = rows[len(rows) - count:] if newest_first else rows[:count]
    seqs = {message.seq for message in kept}
    return HistoryPage(kept, True, {seq: note for seq, note in notes.items() if seq in seqs})


def _body_size(message: Message) -> int:
    body = message.body
    if isinstance(body, dict):
        # An edit entry holds a whole new body (a page of them must still fit a frame).
        inner = body.get("body")
        return 256 + (len(inner) if isinstance(inner, str | bytes) else 0)
    return len(body) if isinstance(body, str | bytes) else 256


_HANDLERS: dict[type[ops.OwnerCommand], str] = {
    ops.Send: "send", ops.MarkRead: "mark_read", ops.Acknowledge: "acknowledge",
    ops.OpenDirect: "open_direct", ops.CreateGroup: "create_group",
    ops.AddMembers: "add_members", ops.RemoveMembers: "remove_members",
    ops.Promote: "promote", ops.Leave: "leave", ops.Rename: "rename",
    ops.SetGroupPhoto: "set_group_photo", ops.View: "view",
    ops.History: "history", ops.Status: "status", ops.Typing: "typing",
    ops.ReadLog: "read_log", ops.ConversationsOf: "conversations_of",
    ops.AnswerRequest: "answer_request", ops.SetBlock: "set_block",
    ops.DirectStatus: "direct_status", ops.Invite: "invite",
    ops.AnswerInvite: "answer_invite", ops.InvitesOf: "invites_of",
    ops.DeleteMessage: "delete_message", ops.SetDisappearing: "set_disappearing",
    ops.EraseMember: "erase_member", ops.React: "react", ops.Edit: "edit", ops.Pin: "pin",
    ops.EditHistory: "edit_history",
}


def _check_encryption(conv: Conversation, wanted: int) -> None:
    """An existing direct chat is handed out only as it is: encryption is chosen once."""
    if wanted != -1 and bool(wanted) != conv.encrypted:
        state = "is" if conv.encrypted else "is not"
        raise Conflict(f"this direct conversation exists and {state} end-to-end encrypted; "
                       "a conversation cannot be switched (open it without `encrypted`)",
                       code="encryption_mismatch")
