"""Sending into a conversation's log, reading it back, and read receipts.

A send is acknowledged only when the batch that holds it is durable. The triple
(conversation, sender, client_msg_id) identifies a send: a retry gets the original answer
and writes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import trio

from chatd.config import LimitsConfig
from chatd.domain import groups, rules
from chatd.domain.models import Conversation, Message, SendResult, Session, Watermark
from chatd.domain.ratelimit import KeyedRateLimiter
from chatd.errors import BadRequest, ChatdError, NotFound, PayloadTooLarge
from chatd.protocol import frames
from chatd.services.commands import Commands
from chatd.services.live import Hub
from chatd.services.log import ConversationLog
from chatd.services.owner import ConversationOwner
from chatd.services.receipts import Receipts
from chatd.storage import Batch, Pending, Store, records


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[Message]
    #: True when more messages lie beyond the page in the direction it was read.
    has_more: bool


def _nothing(batch: Batch) -> None:
    """A command that writes nothing of its own: the batch it makes carries the hints."""


class MessagingService:
    def __init__(self, *, store: Store, log: ConversationLog, owner: ConversationOwner,
                 commands: Commands, hub: Hub, receipts: Receipts,
                 shares_read_receipts: Callable[[int], bool], limits: LimitsConfig) -> None:
        self._store = store
        self._log = log
        self._owner = owner
        self._commands = commands
        self._hub = hub
        self._receipts = receipts
        self._shares_read = shares_read_receipts
        self._limits = limits
        # Acks' cursor rows not written yet, (device, conversation) -> seq.
        self._cursor_hints: dict[tuple[int, int], int] = {}
        # Set when an ack leaves a hint, for the hint writer.
        self._hints_waiting = trio.Event()
        # Typing notices: a burst of 3, then one every 2 s per (user, conversation).
        self._typing_limit = KeyedRateLimiter(per_second=0.5, burst=3)

    def member_view(self, session: Session, conversation_id: int) -> Conversation:
        """The conversation, if the caller is a member; 404 alike whether it does not
        exist or the caller is not in it."""
        conv = self._owner.get(conversation_id)
        groups.require_member(conv, session.user_id)
        return conv

    async def send(self, session: Session, *, conversation_id: int, client_msg_id: str,
                   content_type: str, body: str | bytes) -> SendResult:
        pending = self.start_send(session, conversation_id=conversation_id,
                                  client_msg_id=client_msg_id, content_type=content_type,
                                  body=body)
        return await pending.wait()

    def start_send(self, session: Session, *, conversation_id: int, client_msg_id: str,
                   content_type: str, body: str | bytes) -> Pending[SendResult]:
        """Check and queue a send now; sends queued one after another keep their order.
        Await the result for the answer, which comes once the message is durable."""
        client_msg_id = rules.check_client_msg_id(client_msg_id)
        content_type = rules.check_content_type(content_type)
        if rules.is_text_content(content_type) != isinstance(body, str):
            raise BadRequest("body: text/* content types take a string body, others take bytes")
        size = len(body.encode()) if isinstance(body, str) else len(body)
        if size > self._limits.max_message_bytes:
            raise PayloadTooLarge(
                f"body is {size} bytes; the limit is {self._limits.max_message_bytes}",
                code="body_too_large")
        self.member_view(session, conversation_id)

        def apply(batch: Batch) -> SendResult:
            conv = self._owner.get(conversation_id)
            # Checked again here: a removal may have been queued since the first check.
            groups.require_member(conv, session.user_id)
            previous = self._owner.previous_send(conversation_id, session.user_id, client_msg_id)
            if previous is not None:
                return previous
            message = self._owner.append(batch, conv, sender_id=session.user_id,
                                         sender_device=session.device_id,
                                         content_type=content_type, body=body,
                                         client_msg_id=client_msg_id)
            return SendResult(message.message_id, conversation_id, message.seq, message.ts)

        return self._commands.enqueue(apply)

    def history(self, session: Session, conversation_id: int, *, after: int | None,
                before: int | None, limit: int | None) -> HistoryPage:
        """A page of the log in ascending seq order: the oldest after `after`, else the
        newest before `before` (or at the head). Members see entries from their joining on."""
        conv = self.member_view(session, conversation_id)
        if limit is None:
            limit = self._limits.history_page_default
        if not 1 <= limit <= self._limits.history_page_max:
            raise BadRequest(f"limit: must be within 1..{self._limits.history_page_max}")
        for name, value in (("after", after), ("before", before)):
            if value is not None and value < 0:
                raise BadRequest(f"{name}: must not be negative")
        floor = max(after or 0, conv.members[session.user_id].joined_seq - 1)
        newest_first = after is None
        if before is not None and before <= floor + 1:
            return HistoryPage([], has_more=False)
        # One extra row tells whether there is more without a second scan.
        rows = self._log.read(conversation_id, after=floor, before=before, limit=limit + 1,
                              newest_first=newest_first)
        has_more = len(rows) > limit
        if has_more:
            rows = rows[1:] if newest_first else rows[:limit]
        return HistoryPage(rows, has_more)

    def conversations_of(self, session: Session) -> list[Conversation]:
        """The caller's conversations, the most recently active first."""
        result = []
        for conversation_id in self._owner.conversation_ids_of(session.user_id):
            conv = self._owner.find(conversation_id)
            if conv is not None and conv.is_member(session.user_id):
                result.append(conv)
        result.sort(key=lambda conv: conv.last_ts, reverse=True)
        return result

    def cursors_of(self, session: Session) -> dict[int, int]:
        """conversation_id -> the seq the caller's device acknowledged (its catch-up
        starts after it)."""
        cursors = {conversation_id: seq for (_, conversation_id), seq in
                   self._store.scan(records.CURSORS, records.u64(session.device_id))}
        # Acks not written yet (a reconnect within the hint interval) count too.
        for (device_id, conversation_id), seq in self._cursor_hints.items():
            if device_id == session.device_id:
                cursors[conversation_id] = max(seq, cursors.get(conversation_id, 0))
        return cursors

    async def mark_read(self, session: Session, conversation_id: int, seq: int) -> Watermark:
        return await self.start_mark_read(session, conversation_id, seq).wait()

    def start_mark_read(self, session: Session, conversation_id: int,
                        seq: int) -> Pending[Watermark]:
        return self._start_move_watermark(session, conversation_id, seq, read=True)

    def acknowledge(self, session: Session, conversation_id: int, seq: int,
                    acked: dict[int, int]) -> None:
        """A device has everything up to `seq`: move its cursor (where its next catch-up
        starts) and the user's delivered watermark. `acked` is the device's cursor map,
        kept current here, so a repeated ack costs a lookup.

        Both are hints (docs/architecture.md, "Delivery hints"): losing one in a crash
        means the device is sent those messages again and drops them by seq, and its
        next ack moves the watermark again. So an ack never waits for, or causes, an
        fsync: it changes memory now, and its rows ride in the next batch."""
        conv = self._checked_seq(session, conversation_id, seq)
        if acked.get(conversation_id, -1) >= seq:
            return
        acked[conversation_id] = seq
        self._cursor_hints[(session.device_id, conversation_id)] = seq
        self._hints_waiting.set()
        current = conv.watermark(session.user_id)
        mark = current.advanced(delivered=seq)
        if mark != current:
            self._owner.move_watermark_hint(conv, session.user_id, mark)
            self._receipts.moved(conv, session.user_id, current, mark)

    def check_ack(self, session: Session, conversation_id: int, seq: int) -> None:
        """Refuse an ack `acknowledge` would refuse (to answer it before applying it)."""
        self._checked_seq(session, conversation_id, seq)

    def _checked_seq(self, session: Session, conversation_id: int, seq: int) -> Conversation:
        conv = self.member_view(session, conversation_id)
        if seq < 0:
            raise BadRequest("seq: must not be negative", code="invalid_field")
        if seq > conv.head_seq:
            raise BadRequest(f"seq: the conversation's last seq is {conv.head_seq}",
                             code="seq_out_of_range")
        return conv

    def drain_hints_into(self, batch: Batch) -> None:
        """Put the acks' cursor rows (and the owner's hinted watermarks) in `batch`."""
        cursors, self._cursor_hints = self._cursor_hints, {}
        for key, seq in cursors.items():
            batch.put(records.CURSORS, key, seq)
        self._owner.drain_hints_into(batch)

    def forget_device(self, user_id: int, device_id: int) -> None:
        """A revoked device's cursors are deleted; its pending hints must not return them."""
        for key in [key for key in self._cursor_hints if key[0] == device_id]:
            del self._cursor_hints[key]

    async def run_hint_writer(self, interval: float = 0.5) -> None:
        """Hints ride in the next batch; when no batch comes for `interval` seconds, one
        unsynced batch of their own carries them. An idle server is not woken for it:
        the writer sleeps until an ack leaves a hint."""
        while True:
            await self._hints_waiting.wait()
            await trio.sleep(interval)
            self._hints_waiting = trio.Event()
            if self._cursor_hints or self._owner.has_hints():
                with contextlib.suppress(ChatdError):  # shutting down: the drain takes them
                    self._commands.enqueue(_nothing, durable=False)

    def _start_move_watermark(self, session: Session, conversation_id: int, seq: int, *,
                              read: bool) -> Pending[Watermark]:
        self._checked_seq(session, conversation_id, seq)

        def apply(batch: Batch) -> Watermark:
            conv = self._owner.get(conversation_id)
            groups.require_member(conv, session.user_id)
            current = conv.watermark(session.user_id)
            mark = current.advanced(read=seq) if read else current.advanced(delivered=seq)
            if mark != current:
                self._owner.set_watermark(batch, conv, session.user_id, mark)
                batch.after_commit.append(
                    lambda: self._receipts.moved(conv, session.user_id, current, mark))
            return mark

        return self._commands.enqueue(apply)

    def typing(self, session: Session, conversation_id: int) -> bool:
        """Relay a typing notice to the other members; False when rate limited (dropped)."""
        conv = self.member_view(session, conversation_id)
        key = f"{session.user_id}:{conversation_id}"
        if self._typing_limit.try_acquire(key, trio.current_time()) > 0:
            return False
        others = [user_id for user_id in conv.members if user_id != session.user_id]
        self._hub.publish_ephemeral(others,
                                    frames.typing_frame(conversation_id, session.user_id))
        return True

    def message_status(self, session: Session, conversation_id: int,
                       seq: int) -> list[tuple[int, bool, bool | None]]:
        """(member, delivered, read) for one message, derived from the watermarks; `read`
        is None where read receipts are not shared (the member's or the caller's choice)."""
        conv = self.member_view(session, conversation_id)
        # Entries before the caller joined are as unknown to them as those never written.
        if not max(1, conv.members[session.user_id].joined_seq) <= seq <= conv.head_seq:
            raise NotFound(f"no message with seq {seq} in this conversation that you can "
                           "read", code="unknown_message")
        caller_sees_reads = self._shares_read(session.user_id)
        return [(user_id, conv.watermark(user_id).delivered_seq >= seq,
                 conv.watermark(user_id).read_seq >= seq
                 if user_id == session.user_id or (caller_sees_reads
                                                   and self._shares_read(user_id))
                 else None)
                for user_id, member in conv.members.items() if member.joined_seq <= seq]
