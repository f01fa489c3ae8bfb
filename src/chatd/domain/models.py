"""Records of the domain, as the services and the storage layer exchange them."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from chatd.domain.privacy import DirectState
    from chatd.domain.targets import Annotation
    from chatd.domain.unread import SnapshotSkips, UncountedSeqs

ConversationKind = Literal["direct", "group"]
Role = Literal["admin", "member"]
#: A message body: text for text/* types, opaque bytes for the rest (ciphertext later),
#: a small map for system messages the server writes itself.
Body = str | bytes | dict[str, Any]


@dataclass(slots=True)
class User:
    user_id: int
    handle: str
    display_name: str
    password_hash: bytes
    created_at: int
    status_text: str = ""
    #: Privacy: when set, presence shows online/offline but never last_seen.
    hide_last_seen: bool = False
    #: Privacy: when off, others are not told when this user has read their messages,
    #: and (as in WhatsApp) this user is not told when others read theirs.
    read_receipts: bool = True
    #: The media id of the profile photo (0: none).
    photo_media_id: int = 0
    #: Privacy (domain/privacy.py): who sees last seen, and status text and photo
    #: (everyone / contacts / nobody); who may add them to groups (everyone / contacts).
    last_seen_visibility: str = "everyone"
    profile_visibility: str = "everyone"
    groups_add: str = "everyone"

    @property
    def last_seen_setting(self) -> str:
        """`hide_last_seen` (PATCH /me) predates the setting and means "nobody"."""
        return "nobody" if self.hide_last_seen else self.last_seen_visibility


@dataclass(frozen=True, slots=True)
class Device:
    user_id: int
    device_id: int
    name: str
    created_at: int
    token_hash: bytes


@dataclass(frozen=True, slots=True)
class TokenRecord:
    user_id: int
    device_id: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class Session:
    """Who is calling: the authenticated user and device behind a bearer token."""

    user_id: int
    device_id: int
    token_hash: bytes
    #: When the token stops being valid (ms): open sockets are closed then.
    expires_at: int


@dataclass(frozen=True, slots=True)
class Message:
    message_id: int
    conversation_id: int
    seq: int
    sender_id: int
    sender_device: int
    client_msg_id: str
    content_type: str
    body: Body
    ts: int
    #: Media carried by the message: one map per attachment (`domain/media.py`,
    #: `attachment_record`), in the order the sender gave them.
    attachments: tuple[dict[str, Any], ...] = ()
    #: When a disappearing message expires (ms; 0: never). From then on every read shows
    #: its tombstone, and the owner's sweeper writes that tombstone (services/deletion.py).
    expires_at: int = 0
    #: The seq of the entry this one replies to (0: not a reply; domain/replies.py).
    reply_to: int = 0
    #: The members it mentions (resolved at send time; where a notifier finds them).
    mentions: tuple[int, ...] = ()
    #: How many forwards away from its original this copy is (0: not forwarded).
    forwarded: int = 0
    #: The quote of `reply_to` as a read shows it: made by the owner at each read (and
    #: for the live frame at send time), never stored, so a later delete of the target
    #: shows here at once and leaves no copy of its text on disk (domain/replies.py).
    quote: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a sender is told once its message is durable (also the answer to a resend)."""

    message_id: int
    conversation_id: int
    seq: int
    ts: int


@dataclass(frozen=True, slots=True)
class Member:
    role: Role
    #: The seq of the log entry that added this member (0 for a direct conversation's
    #: members, who see it from the start). Members read history from here on.
    joined_seq: int


@dataclass(frozen=True, slots=True)
class Watermark:
    """Receipts per (conversation, user): the highest seq delivered and read."""

    delivered_seq: int = 0
    read_seq: int = 0

    def advanced(self, delivered: int = 0, read: int = 0) -> Watermark:
        """Watermarks only move forward; reading a message implies it was delivered."""
        read_seq = max(self.read_seq, read)
        return Watermark(max(self.delivered_seq, delivered, read_seq), read_seq)


class RecentSenders:
    """Who sent a conversation's most recent messages (the last `limit` of them), so that
    a receipt can go to the senders of the messages it covers without reading the log."""

    __slots__ = ("_limit", "_senders", "_seqs", "covers_from")

    def __init__(self, covers_from: int, limit: int = 1024) -> None:
        # Two parallel lists in seq order, so a range is found by bisection (an ack of
        # an old message must not scan everything newer), trimmed in bulk.
        self._seqs: list[int] = []
        self._senders: list[int] = []
        self._limit = limit
        #: The lowest seq this knows the sender of (if it was sent by a user at all).
        self.covers_from = covers_from

    def add(self, seq: int, sender_id: int) -> None:
        self._seqs.append(seq)
        self._senders.append(sender_id)
        if len(self._seqs) >= 2 * self._limit:
            drop = len(self._seqs) - self._limit
            self.covers_from = self._seqs[drop - 1] + 1
            del self._seqs[:drop], self._senders[:drop]

    def __len__(self) -> int:
        return len(self._seqs)

    def senders(self, low: int, high: int) -> set[int]:
        """The senders of messages with low <= seq <= high, for low >= `covers_from`."""
        start = bisect.bisect_left(self._seqs, low)
        end = bisect.bisect_right(self._seqs, high, lo=start)
        return set(self._senders[start:end])


@dataclass(slots=True)
class Conversation:
    """A conversation as its owner shard holds it: the head of its log, its members (in
    join order) and their receipt watermarks."""

    conversation_id: int
    kind: ConversationKind
    name: str
    created_by: int
    created_at: int
    head_seq: int = 0
    #: When the newest log entry was written (ms); `created_at` for an empty log.
    last_ts: int = 0
    members: dict[int, Member] = field(default_factory=dict)
    watermarks: dict[int, Watermark] = field(default_factory=dict)
    #: The owner's index of recent senders (set once the owner holds the conversation).
    recent: RecentSenders | None = None
    #: A group's photo (media id; 0: none).
    photo_media_id: int = 0
    #: The seq of the newest entry the owner has *written*, which may be ahead of
    #: `head_seq`, the newest it has *acknowledged* (durable here and on the replica):
    #: appends number from this one, everything a client sees stops at `head_seq`.
    written_seq: int = 0
    #: A direct conversation's request and block state (its owner keeps it current;
    #: None: no record, which is an accepted chat from before requests existed).
    direct: DirectState | None = None
    #: Disappearing messages: entries appended after it was set expire this many seconds
    #: after they were sent (0: off).
    disappearing_s: int = 0
    #: A group's choice: every member may change the timer, not only its admins.
    anyone_sets_timer: bool = False
    #: The seqs of the pinned messages, in the order they were pinned (services/pins.py).
    pins: list[int] = field(default_factory=list)
    #: The log entries unread counts skip (reactions, edits, pins; domain/unread.py): the
    #: owner's index, or what a snapshot from the owner says. None: none known.
    uncounted: UncountedSeqs | SnapshotSkips | None = None
    #: End-to-end encrypted (issue 14): set at creation, never changed; only the
    #: ciphertext content types are accepted (domain/rules.py).
    encrypted: bool = False

    def is_member(self, user_id: int) -> bool:
        return user_id in self.members

    def is_admin(self, user_id: int) -> bool:
        member = self.members.get(user_id)
        return member is not None and member.role == "admin"

    def watermark(self, user_id: int) -> Watermark:
        return self.watermarks.get(user_id, _NO_RECEIPTS)

    def unread(self, user_id: int) -> int:
        read_seq = self.watermark(user_id).read_seq
        skipped = self.uncounted.between(read_seq, self.head_seq) \
            if self.uncounted is not None else 0
        return max(0, self.head_seq - read_seq - skipped)


_NO_RECEIPTS = Watermark()


@dataclass(frozen=True, slots=True)
class Created:
    """A direct conversation opened: `created` when this call made it."""

    conversation: Conversation
    created: bool


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[Message]
    #: True when more messages lie beyond the page in the direction it was read.
    has_more: bool
    #: Reactions and edits of the page's messages, by seq (domain/annotations.py).
    annotations: dict[int, Annotation] = field(default_factory=dict)
