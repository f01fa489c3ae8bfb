"""Sending into a conversation's log, reading it back, and read receipts.

A send is acknowledged only when the batch that holds it is durable. The triple
(conversation, sender, client_msg_id) identifies a send: a retry gets the original answer
and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from chatd.config import LimitsConfig
from chatd.domain import groups, rules
from chatd.domain.models import Conversation, Message, SendResult, Session, Watermark
from chatd.domain.ratelimit import KeyedRateLimiter
from chatd.errors import BadRequest, NotFound, PayloadTooLarge
from chatd.protocol import frames
from chatd.services.commands import Commands
from chatd.services.live import Hub
from chatd.services.log import ConversationLog
from chatd.services.owner import ConversationOwner
from chatd.storage import Batch, Pending, Store, records


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[Message]
    #: True when more messages lie beyond the page in the direction it was read.
    has_more: bool


class MessagingService:
    def __init__(self, *, store: Store, log: ConversationLog, owner: ConversationOwner,
                 commands: Commands,
                 hub: Hub, limits: LimitsConfig) -> None:
        self._store = store
        self._log = log
        self._owner = owner
        self._commands = commands
        self._hub = hub
        self._limits = limits
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
        return {conversation_id: seq for (_, conversation_id), seq in
                self._store.scan(records.CURSORS, records.u64(session.device_id))}

    async def mark_read(self, session: Session, conversation_id: int, seq: int) -> Watermark:
        return await self.start_mark_read(session, conversation_id, seq).wait()

    def start_mark_read(self, session: Session, conversation_id: int,
                        seq: int) -> Pending[Watermark]:
        return self._start_move_watermark(session, conversation_id, seq, read=True)

    def start_acknowledge(self, session: Session, conversation_id: int, seq: int,
                          acked: dict[int, int] | None = None) -> Pending[Watermark] | None:
        """A device has everything up to `seq`: move its cursor (where its next catch-up
        starts) and the user's delivered watermark. `acked` is the device's cursor map,
        kept current by the caller so repeated acks cost nothing (None is returned then)."""
        if acked is not None and acked.get(conversation_id, -1) >= seq >= 0:
            self.member_view(session, conversation_id)
            return None
        return self._start_move_watermark(session, conversation_id, seq, read=False,
                                          acked=acked)

    def _start_move_watermark(self, session: Session, conversation_id: int, seq: int, *,
                              read: bool,
                              acked: dict[int, int] | None = None) -> Pending[Watermark]:
        self.member_view(session, conversation_id)
        if seq < 0:
            raise BadRequest("seq: must not be negative", code="invalid_field")

        def apply(batch: Batch) -> Watermark:
            conv = self._owner.get(conversation_id)
            groups.require_member(conv, session.user_id)
            if seq > conv.head_seq:
                raise BadRequest(f"seq: the conversation's last seq is {conv.head_seq}",
                                 code="seq_out_of_range")
            current = conv.watermark(session.user_id)
            if read:
                mark = current.advanced(read=seq)
            else:
                mark = current.advanced(delivered=seq)
                batch.put(records.CURSORS, (session.device_id, conversation_id), seq)
                if acked is not None:
                    acked[conversation_id] = max(seq, acked.get(conversation_id, 0))
            if mark != current:
                self._owner.set_watermark(batch, conv, session.user_id, mark)
                batch.after_commit.append(
                    lambda: self._hub.publish_receipt(conv, session.user_id, mark))
            return mark

        return self._commands.enqueue(apply)

    def typing(self, session: Session, conversation_id: int) -> bool:
        """Relay a typing notice to the other members; False when rate limited (dropped)."""
        conv = self.member_view(session, conversation_id)
        key = f"{session.user_id}:{conversation_id}"
        if self._typing_limit.try_acquire(key, trio.current_time()) > 0:
            return False
        others = [user_id for user_id in conv.members if user_id != session.user_id]
        self._hub.publish(others, frames.typing_frame(conversation_id, session.user_id))
        return True

    def message_status(self, session: Session, conversation_id: int,
                       seq: int) -> list[tuple[int, bool, bool]]:
        """(member, delivered, read) for one message, derived from the watermarks."""
        conv = self.member_view(session, conversation_id)
        # Entries before the caller joined are as unknown to them as those never written.
        if not max(1, conv.members[session.user_id].joined_seq) <= seq <= conv.head_seq:
            raise NotFound(f"no message with seq {seq} in this conversation that you can "
                           "read", code="unknown_message")
        return [(user_id, conv.watermark(user_id).delivered_seq >= seq,
                 conv.watermark(user_id).read_seq >= seq)
                for user_id, member in conv.members.items() if member.joined_seq <= seq]
