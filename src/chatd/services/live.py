"""The live stream: which sockets are connected, and what each one is owed.

`LiveSession` is the delivery state of one WebSocket connection, with no I/O of its own:
the web layer feeds it client frames and takes from it the frames to write. `Hub` is this
shard's connection directory: it fans durable messages out to the sessions of the members,
and carries receipts, typing and presence.

Delivery is in seq order per conversation with no gap and no duplicate, whether a message
comes from the catch-up read or live. Each session keeps, per conversation, the next seq it
owes; a live message is queued directly only when it is exactly that seq, otherwise the
conversation is marked *behind* and the session reads the missing range from the store
before going on. Catch-up on connect is the same mechanism: every conversation whose
cursor is below its head starts out behind. So the seam between catch-up and live needs no
locking: everything here runs on the event loop, and a message is published only after it
is durable, so the store always holds what the session reads.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable

from chatd.domain import groups
from chatd.domain.models import Conversation, Message, User
from chatd.errors import BadRequest
from chatd.protocol import frames
from chatd.protocol.frames import OutFrame
from chatd.services.clock import Clock
from chatd.services.log import ConversationLog
from chatd.services.owner import ConversationOwner


class SessionEnd(enum.Enum):
    """Why a session ended. The transport turns it into its own terms (a WebSocket close
    code, see web/sockets.py); the services know nothing of codes."""

    CONNECTION_CLOSED = "connection closed"
    SHUTTING_DOWN = "server shutting down"
    IDLE = "idle"
    #: Logged out, revoked, or the token expired.
    UNAUTHORIZED = "unauthorized"
    #: The outbound queue filled: the client reads too slowly (nothing is lost).
    TOO_SLOW = "too slow"
    INTERNAL_ERROR = "internal error"


class SessionClosed(Exception):
    """The session must end, for `end`; `reason` is for the client."""

    def __init__(self, end: SessionEnd, reason: str) -> None:
        super().__init__(reason)
        self.end = end
        self.reason = reason


class LiveSession:
    """No I/O and no awaiting: the transport registers `on_ready`, which is called (once
    until the next `take_frames`) when there is something to write or the session closed,
    and then takes the frames. Several sockets' frames are thus written in one pass."""

    __slots__ = (
        "_behind",
        "_closed",
        "_fetch_batch",
        "_fetch_bytes",
        "_log",
        "_max_queue",
        "_next",
        "_owner",
        "_queue",
        "_ready",
        "acked",
        "device_id",
        "on_ready",
        "user_id",
    )

    def __init__(self, *, user_id: int, device_id: int, log: ConversationLog,
                 owner: ConversationOwner,
                 max_queue: int, on_ready: Callable[[LiveSession], None],
                 fetch_batch: int = 200, fetch_bytes: int = 256 * 1024) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self._log = log
        self._owner = owner
        self._max_queue = max_queue
        self._fetch_batch = fetch_batch
        self._fetch_bytes = fetch_bytes
        self._queue: deque[OutFrame] = deque()
        self.on_ready = on_ready
        self._ready = False  # on_ready was called and take_frames has not run since
        self._next: dict[int, int] = {}
        self._behind: dict[int, None] = {}  # an ordered set
        self._closed: SessionClosed | None = None
        #: The highest seq this device acknowledged per conversation (to skip no-op acks).
        self.acked: dict[int, int] = {}

    # -- fed by the hub and the web layer (sync, never blocks) ----------------------------

    def start(self, conversations: Iterable[Conversation], cursors: dict[int, int]) -> None:
        """Set the delivery position of each conversation from the device's cursors
        (conversation_id -> the seq it acknowledged)."""
        self.acked = cursors
        for conv in conversations:
            floor = self._floor(conv)
            if floor is None:
                continue
            acked = self.acked.get(conv.conversation_id)
            if acked is None:
                # Never acked here: a new device, or a conversation joined since. A device
                # is owed what was written after it came to be, not the whole history.
                start = self._first_newer_than(conv, floor, self.device_id)
            else:
                start = max(acked + 1, floor)
            self._set_next(conv, start)

    def sync(self, cursors: dict[int, int]) -> None:
        """The client says what it holds (a reinstalled app): resend from there. All of
        it is checked before anything changes: a conversation the user is not in, or a
        seq past the head (which would silence the conversation), refuses the whole sync."""
        positions = []
        for conversation_id, seq in cursors.items():
            conv = self._owner.find(conversation_id)
            floor = self._floor(conv) if conv is not None else None
            if conv is None or floor is None:
                raise groups.unknown_conversation(conversation_id)
            if not 0 <= seq <= conv.head_seq:
                raise BadRequest(f"cursors: seq {seq} of conversation {conversation_id} is "
                                 f"outside 0..{conv.head_seq}", code="seq_out_of_range")
            positions.append((conv, max(seq + 1, floor)))
        for conv, next_seq in positions:
            self._set_next(conv, next_seq)

    def offer(self, message: Message, frame: OutFrame) -> None:
        conversation_id = message.conversation_id
        next_seq = self._next.get(conversation_id)
        if next_seq is None:
            # A conversation this session does not follow yet: just created or joined.
            conv = self._owner.find(conversation_id)
            floor = self._floor(conv) if conv is not None else None
            next_seq = message.seq if floor is None else floor
            self._next[conversation_id] = next_seq
        if message.seq < next_seq:
            return
        if message.seq == next_seq and conversation_id not in self._behind:
            self._next[conversation_id] = next_seq + 1
            # The sending device learns the seq from the send's answer; sending the message
            # back would double its traffic. Its other devices do get it.
            if message.sender_device != self.device_id:
                self.push(frame)
        else:
            self._behind[conversation_id] = None
            self._signal()

    def push_ephemeral(self, frame: OutFrame) -> None:
        if len(self._queue) < self._max_queue // 2:
            self.push(frame)

    def push(self, frame: OutFrame) -> None:
        if self._closed is not None:
            return  # nothing more is written to a closing session
        if len(self._queue) >= self._max_queue:
            # Nothing is lost: messages are re-read from the store on reconnect.
            self.close(SessionEnd.TOO_SLOW, "too slow: the outbound queue is full; reconnect")
            return
        self._queue.append(frame)
        self._signal()

    def close(self, end: SessionEnd, reason: str) -> None:
        if self._closed is None:
            self._closed = SessionClosed(end, reason)
            self._queue.clear()
            self._signal()

    @property
    def queued(self) -> int:
        """Frames waiting for the transport."""
        return len(self._queue)

    # -- drained by the transport ---------------------------------------------------------

    def take_frames(self, limit: int = 64) -> list[OutFrame]:
        """The frames to write now (at most `limit`, to share one WebSocket message), with
        at most one catch-up read from the store; [] when there is nothing. Raises
        `SessionClosed` when the session must end."""
        self._ready = False
        if self._closed is not None:
            raise self._closed
        if not self._queue and self._behind:
            self._catch_up_one()
        count = min(limit, len(self._queue))
        if count == len(self._queue) and not self._behind:
            taken = list(self._queue)
            self._queue.clear()
            return taken
        # More remains: ask to be called again (after other sockets had their turn).
        self._signal()
        return [self._queue.popleft() for _ in range(count)]

    def _signal(self) -> None:
        if not self._ready:
            self._ready = True
            self.on_ready(self)

    # -- internals ------------------------------------------------------------------------

    def _floor(self, conv: Conversation) -> int | None:
        """The first seq this user may see, or None for a non-member."""
        member = conv.members.get(self.user_id)
        return None if member is None else max(1, member.joined_seq)

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

    def _set_next(self, conv: Conversation, next_seq: int) -> None:
        self._next[conv.conversation_id] = next_seq
        if next_seq <= conv.head_seq:
            self._behind[conv.conversation_id] = None
            self._signal()

    def _catch_up_one(self) -> None:
        conversation_id = next(iter(self._behind))
        conv = self._owner.find(conversation_id)
        if conv is None or not conv.is_member(self.user_id):
            # Removed meanwhile: read nothing more of it.
            del self._behind[conversation_id]
            self._next.pop(conversation_id, None)
            return
        next_seq = self._next[conversation_id]
        rows = self._log.read(conversation_id, after=next_seq - 1, before=None,
                              limit=self._fetch_batch, newest_first=False)
        size = 0
        for taken, message in enumerate(rows):
            if taken and size >= self._fetch_bytes:
                # Enough for one write: the rest is read again after it has gone, so a
                # catch-up of big messages holds a few hundred KB here, not megabytes.
                break
            self._queue.append(frames.message_frame(message))
            next_seq = message.seq + 1
            size += _body_size(message)
        else:
            if len(rows) < self._fetch_batch:
                del self._behind[conversation_id]
        self._next[conversation_id] = next_seq


def _body_size(message: Message) -> int:
    body = message.body
    return len(body) if isinstance(body, str | bytes) else 256


class Hub:
    """This shard's connected sessions by user, and fan-out to them."""

    def __init__(self, *, owner: ConversationOwner, clock: Clock) -> None:
        self._owner = owner
        self._clock = clock
        self._sessions: dict[int, set[LiveSession]] = {}
        self._hidden_last_seen: set[int] = set()

    def sessions_of(self, user_id: int) -> set[LiveSession]:
        return self._sessions.get(user_id, set())

    def is_online(self, user_id: int) -> bool:
        return user_id in self._sessions

    def attach(self, session: LiveSession) -> bool:
        """Register a session; True if it is the user's first (they came online)."""
        sessions = self._sessions.setdefault(session.user_id, set())
        sessions.add(session)
        return len(sessions) == 1

    def detach(self, session: LiveSession) -> bool:
        """Forget a session; True if it was the user's last (they went offline)."""
        sessions = self._sessions.get(session.user_id)
        if sessions is None:
            return False
        sessions.discard(session)
        if sessions:
            return False
        del self._sessions[session.user_id]
        return True

    def close_all(self, end: SessionEnd, reason: str) -> None:
        for sessions in self._sessions.values():
            for session in sessions:
                session.close(end, reason)

    def close_device(self, user_id: int, device_id: int) -> None:
        for session in self.sessions_of(user_id):
            if session.device_id == device_id:
                session.close(SessionEnd.UNAUTHORIZED, "this device was logged out")

    # -- fan-out --------------------------------------------------------------------------

    def publish_message(self, message: Message, recipients: Iterable[int]) -> None:
        frame: OutFrame | None = None  # built only if someone is connected here
        for user_id in recipients:
            sessions = self._sessions.get(user_id)
            if sessions:
                if frame is None:
                    frame = frames.message_frame(message)
                for session in sessions:
                    session.offer(message, frame)

    def publish(self, user_ids: Iterable[int], frame: OutFrame,
                skip: LiveSession | None = None) -> None:
        for user_id in user_ids:
            for session in self._sessions.get(user_id, ()):
                if session is not skip:
                    session.push(frame)

    def publish_ephemeral(self, user_ids: Iterable[int], frame: OutFrame) -> None:
        """Typing and presence: worth nothing late, so a session with a backlog drops
        them instead of counting them towards its limit (another user's burst of typing
        notices must not get a reader cut off as too slow)."""
        for user_id in user_ids:
            for session in self._sessions.get(user_id, ()):
                session.push_ephemeral(frame)

    # -- presence and profiles ------------------------------------------------------------

    def contacts_of(self, user_id: int) -> set[int]:
        """Users who share a conversation with `user_id` (who may see their presence)."""
        contacts: set[int] = set()
        for conversation_id in self._owner.conversation_ids_of(user_id):
            conv = self._owner.find(conversation_id)
            if conv is not None and conv.is_member(user_id):
                contacts.update(conv.members)
        contacts.discard(user_id)
        return contacts

    def announce_online(self, session: LiveSession, user: User) -> None:
        """The user came online: tell their contacts, and tell the session who is online."""
        if user.hide_last_seen:
            self._hidden_last_seen.add(user.user_id)
        else:
            self._hidden_last_seen.discard(user.user_id)
        contacts = self.contacts_of(user.user_id)
        self.publish_ephemeral(contacts, frames.presence_frame(user.user_id, True, None))
        for contact in contacts:
            if self.is_online(contact):
                session.push(frames.presence_frame(contact, True, None))

    def announce_offline(self, user_id: int, last_seen: int) -> None:
        shown = None if user_id in self._hidden_last_seen else last_seen
        self.publish_ephemeral(self.contacts_of(user_id),
                               frames.presence_frame(user_id, False, shown))

    def publish_profile(self, user: User) -> None:
        if user.hide_last_seen:
            self._hidden_last_seen.add(user.user_id)
        else:
            self._hidden_last_seen.discard(user.user_id)
        self.publish(self.contacts_of(user.user_id) | {user.user_id},
                     frames.profile_frame(frames.public_profile(user)))
