"""The owner side of conversations: in-memory state and the one way to append to a log.

The owner shard is the single writer of each conversation it owns. `ConversationOwner`
keeps recently used conversations in memory (head seq, members, watermarks) and mutates
them only from inside group-commit commands, which run one at a time; so seqs come out
dense and in order, and a command always sees the effects of the commands before it,
even those whose batch has not landed yet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

from chatd.domain import groups
from chatd.domain.ids import SnowflakeGenerator
from chatd.domain.models import (
    Body,
    Conversation,
    Message,
    RecentSenders,
    SendResult,
    Watermark,
)
from chatd.domain.rules import ANNOTATION_CONTENT_TYPES, SYSTEM_CONTENT_TYPE
from chatd.domain.unread import UncountedSeqs
from chatd.services.clock import Clock
from chatd.services.group_counts import GroupCounts
from chatd.services.log import ConversationLog
from chatd.storage import Batch, Store, records
from chatd.storage.records import MAX_U64

#: The newest uncounted entries (reactions, edits, pins) the owner keeps in memory per
#: conversation, for unread counts (domain/unread.py).
UNCOUNTED_KEPT = 1024

#: The most log entries read to address one receipt to the senders of older messages.
MAX_RECEIPT_SCAN = 2_000

#: The estimate of a cached conversation's memory, in bytes: the object and its dicts,
#: then per member (a `Member`, its key and slot), per watermark and per recent sender
#: (two list slots and two ints). Measured with tracemalloc on CPython 3.11 (a 1,000
#: member group: ~300 KB; a direct chat with 2,000 recent senders: ~170 KB).
_BASE_BYTES = 800
_MEMBER_BYTES = 150
_WATERMARK_BYTES = 150
_RECENT_BYTES = 85


def estimated_bytes(conv: Conversation) -> int:
    recent = len(conv.recent) if conv.recent is not None else 0
    return (_BASE_BYTES + _MEMBER_BYTES * len(conv.members)
            + _WATERMARK_BYTES * len(conv.watermarks) + _RECENT_BYTES * recent)


#: Called with each message once it is durable, in log order, and the users to deliver it
#: to: the members when it was appended, plus those a system entry removes.
MessageListener = Callable[[Message, tuple[int, ...]], None]


class ConversationOwner:
    def __init__(self, *, store: Store, log: ConversationLog,
                 ids: SnowflakeGenerator, clock: Clock, cache_size: int,
                 cache_bytes: int = 256 * 1024 * 1024) -> None:
        self._store = store
        self._log = log
        self._ids = ids
        self._clock = clock
        # The LRU is bounded in conversations and in (estimated) bytes: a few huge groups
        # must not fill memory while the count stays low.
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self._cache: OrderedDict[int, Conversation] = OrderedDict()
        #: The estimate each cached conversation was last counted at, and their sum.
        self._sizes: dict[int, int] = {}
        self.cached_bytes = 0
        #: Groups per user among the conversations owned here (limits.max_groups_per_user).
        self.groups = GroupCounts(store)
        self._listeners: list[MessageListener] = []
        # Conversations changed by batches that have not landed, with a count of those
        # batches. They stay reachable even if the LRU drops them: reloading one from disk
        # would lose its pending changes and hand out a seq twice.
        self._unlanded: dict[int, tuple[Conversation, int]] = {}
        # Sends applied but not yet durable, so a resend inside the same window is
        # answered from here (the database has not got them yet).
        self._in_flight: dict[tuple[int, int, str], SendResult] = {}
        # Watermarks moved by acks and not written yet (they ride in the next batch).
        # By conversation, so that loading one looks at its own hints only.
        self._hinted: dict[int, dict[int, Watermark]] = {}
        # The batch each conversation was last changed in (until it lands).
        self._changing_in: dict[int, Batch] = {}
        # Log entries written by batches that have not landed, by (conversation, seq):
        # a deletion reads the entry as the commands before it left it (a message sent,
        # or deleted, earlier in the same batch is not in the store yet).
        self._unwritten: dict[tuple[int, int], Message] = {}
        #: Called when an ack leaves a hinted watermark (the hint writer wakes for it).
        self.on_hint: Callable[[], None] = lambda: None

    def on_message(self, listener: MessageListener) -> None:
        self._listeners.append(listener)

    def forget_all(self) -> None:
        """After a failed batch write, memory may be ahead of the disk: reload from disk."""
        self._cache.clear()
        self._sizes.clear()
        self.cached_bytes = 0
        self._unlanded.clear()
        self._changing_in.clear()
        self._in_flight.clear()
        self.groups.clear()
        self._unwritten.clear()

    def find(self, conversation_id: int) -> Conversation | None:
        conv = self._cache.get(conversation_id)
        if conv is not None:
            self._cache.move_to_end(conversation_id)
            return conv
        unlanded = self._unlanded.get(conversation_id)
        conv = unlanded[0] if unlanded else self._load(conversation_id)
        if conv is not None:
            self.remember(conv)
        return conv

    def _load(self, conversation_id: int) -> Conversation | None:
        """The conversation from disk, with its members (in join order), their watermarks
        and the head of its log."""
        conv = self._store.get(records.CONVERSATIONS, conversation_id)
        if conv is None:
            return None
        prefix = records.u64(conversation_id)
        joined = sorted(((member.joined_seq, user_id, member) for (_, user_id), member
                         in self._store.scan(records.MEMBERS, prefix)),
                        key=lambda entry: entry[:2])
        conv.members = {user_id: member for _, user_id, member in joined}
        conv.watermarks = {user_id: mark for (_, user_id), mark
                           in self._store.scan(records.WATERMARKS, prefix)}
        for user_id, mark in self._hinted.get(conversation_id, {}).items():
            # Evicted before its hint was written: the hint is the newer value.
            if user_id in conv.members:
                conv.watermarks[user_id] = conv.watermark(user_id).advanced(
                    mark.delivered_seq, mark.read_seq)
        conv.head_seq, last_ts = self._log.head(conversation_id)
        # Loaded only when no batch of it is unlanded (`changing` pins it until then):
        # what is on disk is acknowledged.
        conv.written_seq = conv.head_seq
        conv.last_ts = last_ts or conv.created_at
        if conv.kind == "direct":  # its request and block state (services/direct_requests.py)
            conv.direct = self._store.get(records.DIRECT_STATES, conversation_id)
        # Pinned messages in the order they were pinned (services/pins.py).
        conv.pins = [target for _, (_, target) in sorted(
            (pinned_by, key) for key, pinned_by in self._store.scan(records.PINS, prefix))]
        return conv

    def _uncounted_index(self, conversation_id: int) -> UncountedSeqs:
        newest = self._store.range(records.UNCOUNTED, records.pair(conversation_id, 0),
                                   records.pair(conversation_id, MAX_U64),
                                   limit=UNCOUNTED_KEPT, newest_first=True)
        return UncountedSeqs([(seq, ordinal) for (_, seq), ordinal in newest],
                             complete=len(newest) < UNCOUNTED_KEPT,
                             older=partial(self._ordinal_at, conversation_id),
                             limit=UNCOUNTED_KEPT)

    def _ordinal_at(self, conversation_id: int, seq: int) -> int:
        """How many uncounted entries the log has up to `seq`, from the store (a read
        mark older than the ones kept in memory)."""
        last = self._store.range(records.UNCOUNTED, records.pair(conversation_id, 0),
                                 records.pair(conversation_id, seq + 1), limit=1,
                                 newest_first=True)
        return last[0][1] if last else 0

    def conversation_ids_of(self, user_id: int) -> list[int]:
        """The conversations `user_id` is in (from the index the membership rows keep)."""
        return [conversation_id for (_, conversation_id), _ in
                self._store.scan(records.USER_CONVERSATIONS, records.u64(user_id))]

    def senders_between(self, conv: Conversation, low: int, high: int) -> set[int]:
        """Who sent the user messages with low <= seq <= high (system entries have no
        sender to tell). Recent ones come from memory; older ones are read from the log,
        at most `MAX_RECEIPT_SCAN` of them: a receipt is not worth more reading."""
        if high < low:
            return set()
        recent = conv.recent
        covers_from = recent.covers_from if recent is not None else high + 1
        found = recent.senders(max(low, covers_from), high) if recent is not None else set()
        if low < covers_from:
            older_high = min(high, covers_from - 1)
            older_low = max(low, older_high - MAX_RECEIPT_SCAN + 1)
            found.update(message.sender_id for message in self._log.read(
                conv.conversation_id, after=older_low - 1, before=older_high + 1,
                limit=MAX_RECEIPT_SCAN, newest_first=True)
                if message.content_type != SYSTEM_CONTENT_TYPE
                and message.content_type not in ANNOTATION_CONTENT_TYPES)
        return found

    def move_watermark_hint(self, conv: Conversation, user_id: int, mark: Watermark) -> None:
        """Move a watermark outside any command (a delivery ack: a hint that may be lost
        in a crash; docs/architecture.md, "Delivery hints"). It is written with the next
        batch."""
        conv.watermarks[user_id] = mark
        if not self._hinted:
            self.on_hint()
        self._hinted.setdefault(conv.conversation_id, {})[user_id] = mark

    def has_hints(self) -> bool:
        return bool(self._hinted)

    def drain_hints_into(self, batch: Batch) -> None:
        """Put the hinted watermarks into `batch`, skipping members who left meanwhile (the
        leaving command deleted their row, which must not come back)."""
        hinted, self._hinted = self._hinted, {}
        for conversation_id, marks in hinted.items():
            conv = self._cache.get(conversation_id) or self._unlanded_conversation(
                conversation_id)
            for user_id, mark in marks.items():
                if conv is not None and conv.is_member(user_id):
                    batch.put(records.WATERMARKS, (conversation_id, user_id),
                              conv.watermark(user_id))
                elif conv is None:
                    batch.put(records.WATERMARKS, (conversation_id, user_id), mark)

    def _unlanded_conversation(self, conversation_id: int) -> Conversation | None:
        unlanded = self._unlanded.get(conversation_id)
        return unlanded[0] if unlanded else None

    def get(self, conversation_id: int) -> Conversation:
        conv = self.find(conversation_id)
        if conv is None:
            raise groups.unknown_conversation(conversation_id)
        return conv

    def forget_where(self, belongs: Callable[[int], bool]) -> None:
        """Drop the conversations `belongs(conversation_id)` says to (a range this shard
        took over or gave up: its state is read again from disk when next needed)."""
        for held in (self._cache, self._unlanded, self._changing_in, self._hinted):
            for conversation_id in [c for c in held if belongs(c)]:
                del held[conversation_id]
        for conversation_id in [c for c in self._sizes if belongs(c)]:
            self.cached_bytes -= self._sizes.pop(conversation_id)
        self.groups.clear()
        for key in [key for key in self._in_flight if belongs(key[0])]:
            del self._in_flight[key]
        for entry in [entry for entry in self._unwritten if belongs(entry[0])]:
            del self._unwritten[entry]

    def remember(self, conv: Conversation) -> None:
        if conv.recent is None:
            conv.recent = RecentSenders(covers_from=conv.written_seq + 1)
        if not isinstance(conv.uncounted, UncountedSeqs):
            conv.uncounted = self._uncounted_index(conv.conversation_id)
        self._cache[conv.conversation_id] = conv
        self._cache.move_to_end(conv.conversation_id)
        self._measure(conv)

    def _measure(self, conv: Conversation) -> None:
        """Count `conv` at its current estimate, then evict the least recently used while
        over either bound (the newest is always kept, however large)."""
        size = estimated_bytes(conv)
        self.cached_bytes += size - self._sizes.get(conv.conversation_id, 0)
        self._sizes[conv.conversation_id] = size
        while len(self._cache) > 1 and (len(self._cache) > self._cache_size
                                        or self.cached_bytes > self._cache_bytes):
            evicted, _ = self._cache.popitem(last=False)
            self.cached_bytes -= self._sizes.pop(evicted, 0)

    @property
    def cached(self) -> int:
        """Conversations held in the LRU."""
        return len(self._cache)

    def previous_send(self, conversation_id: int, sender_id: int,
                      client_msg_id: str) -> SendResult | None:
        key = (conversation_id, sender_id, client_msg_id)
        return self._in_flight.get(key) or self._store.get(records.DEDUP, key)

    # -- inside group-commit commands only ------------------------------------------------

    def changing(self, batch: Batch, conv: Conversation) -> None:
        """Record that `batch` changes `conv`, which must then outlive LRU eviction until
        the batch has landed (counted once per batch, however many entries it holds)."""
        if self._changing_in.get(conv.conversation_id) is batch:
            return  # (an identity check: this runs for every append)
        self._changing_in[conv.conversation_id] = batch
        _, count = self._unlanded.get(conv.conversation_id, (conv, 0))
        self._unlanded[conv.conversation_id] = (conv, count + 1)
        batch.after_commit.append(partial(self._landed, conv.conversation_id))

    def _landed(self, conversation_id: int) -> None:
        self._changing_in.pop(conversation_id, None)
        unlanded = self._unlanded.get(conversation_id)
        if unlanded is None:
            return  # forgotten meanwhile (its range moved): nothing is pinned any more
        conv, count = unlanded
        if conversation_id in self._cache:
            # It grew or shrank in this batch (members, recent senders): count it anew.
            self._measure(conv)
        if count == 1:
            del self._unlanded[conversation_id]
        else:
            self._unlanded[conversation_id] = (conv, count - 1)

    def append(self, batch: Batch, conv: Conversation, *, sender_id: int, sender_device: int,
               content_type: str, body: Body, client_msg_id: str = "",
               attachments: tuple[dict[str, Any], ...] = (), reply_to: int = 0,
               mentions: tuple[int, ...] = (), forwarded: int = 0,
               quote: dict[str, Any] | None = None, counted: bool = True) -> Message:
        """Give the next seq to a message and add it to the batch. The sender's watermarks
        move to it: you have read what you wrote and everything before it. An entry that
        is not `counted` (a reaction, edit or pin) is skipped by unread counts and moves
        no watermark: reacting to an old message says nothing of having read the rest."""
        self.changing(batch, conv)
        seq = conv.written_seq + 1
        conversation_id = conv.conversation_id
        now = self._clock.now_ms()
        # Disappearing messages: what members write expires; the log's own entries
        # (membership, the timer's changes) stay.
        expires_at = now + conv.disappearing_s * 1000 \
            if conv.disappearing_s and content_type != SYSTEM_CONTENT_TYPE else 0
        message = Message(self._ids.next_id(), conversation_id, seq, sender_id,
                          sender_device, client_msg_id, content_type, body, now,
                          attachments, expires_at, reply_to, mentions, forwarded, quote)
        self.put_message(batch, message)
        if expires_at:
            batch.put(records.EXPIRIES, (expires_at, conversation_id, seq), None)
        conv.written_seq = seq
        if counted and content_type != SYSTEM_CONTENT_TYPE and conv.recent is not None:
            # (A reaction, edit or pin is nobody's message to be told the receipts of.)
            conv.recent.add(seq, sender_id)
        if not counted:
            assert isinstance(conv.uncounted, UncountedSeqs)  # (remember() made it)
            batch.put(records.UNCOUNTED, (conversation_id, seq), conv.uncounted.add(seq))
        elif sender_id in conv.members:
            # You have read what you wrote and everything before it: the newest seq is
            # above any watermark, so this is the sender's new mark outright. It is
            # written once per batch, at its final value (before_write).
            conv.watermarks[sender_id] = Watermark(seq, seq)
            self._watermark_changed(batch, conv, sender_id)
        key: tuple[int, int, str] | None = None
        if client_msg_id:
            key = (conversation_id, sender_id, client_msg_id)
            sent = SendResult(message.message_id, conversation_id, seq, message.ts)
            batch.put(records.DEDUP, key, sent)
            self._in_flight[key] = sent
        # One callback per message, for both: landed, it is published, and from then on
        # the dedup row answers a resend.
        batch.after_commit.append(partial(self._landed_message, conv, message, key,
                                          tuple(conv.members) if self._listeners else ()))
        return message

    def _landed_message(self, conv: Conversation, message: Message,
                        key: tuple[int, int, str] | None, recipients: tuple[int, ...]) -> None:
        # Acknowledged: from now on reads and views show it.
        if message.seq > conv.head_seq:
            conv.head_seq = message.seq
            conv.last_ts = message.ts
        if key is not None:
            self._in_flight.pop(key, None)
        for listener in self._listeners:
            listener(message, recipients)

    def put_message(self, batch: Batch, message: Message) -> None:
        """Write a log entry (new, or a tombstone over one), readable through `entry`
        at once, by the commands after this one."""
        key = (message.conversation_id, message.seq)
        batch.put(records.MESSAGES, key, message)
        self._unwritten[key] = message
        batch.after_commit.append(partial(self._written, key, message))

    def _written(self, key: tuple[int, int], message: Message) -> None:
        if self._unwritten.get(key) is message:
            del self._unwritten[key]

    def entry(self, conversation_id: int, seq: int) -> Message | None:
        """The log entry at `seq` as the commands so far left it (landed or not)."""
        unwritten = self._unwritten.get((conversation_id, seq))
        return unwritten if unwritten is not None else self._log.entry(conversation_id, seq)

    def entries(self, conv: Conversation, *, after: int, limit: int) -> list[Message]:
        """Up to `limit` entries after `after` as the commands so far left them: the
        store's, with the writes of batches not landed laid over them."""
        conversation_id = conv.conversation_id
        end = min(conv.written_seq, after + limit)
        stored = {message.seq: message for message in self._log.read(
            conversation_id, after=after, before=end + 1, limit=limit, newest_first=False)}
        found = []
        for seq in range(after + 1, end + 1):
            message = self._unwritten.get((conversation_id, seq)) or stored.get(seq)
            if message is not None:
                found.append(message)
        return found

    def append_system(self, batch: Batch, conv: Conversation, actor_id: int,
                      event: str, **details: object) -> Message:
        """Membership and name changes are entries in the log, so history shows them."""
        body: dict[str, object] = {"event": event, "actor_id": str(actor_id), **details}
        return self.append(batch, conv, sender_id=actor_id, sender_device=0,
                           content_type=SYSTEM_CONTENT_TYPE, body=body)


    def set_watermark(self, batch: Batch, conv: Conversation, user_id: int,
                      mark: Watermark) -> None:
        if mark != conv.watermark(user_id):
            self.changing(batch, conv)
            conv.watermarks[user_id] = mark
            self._watermark_changed(batch, conv, user_id)

    def _watermark_changed(self, batch: Batch, conv: Conversation, user_id: int) -> None:
        # Written once per batch at its final value: a burst of messages from one sender
        # moves their watermark many times but costs one put.
        if batch.first_time(("watermark", conv.conversation_id, user_id)):
            batch.before_write.append(partial(self._write_watermark, batch, conv, user_id))

    @staticmethod
    def _write_watermark(batch: Batch, conv: Conversation, user_id: int) -> None:
        mark = conv.watermarks.get(user_id)
        if mark is not None:  # None: the member left in this batch (and the row with them)
            batch.put(records.WATERMARKS, (conv.conversation_id, user_id), mark)
