"""The live stream: which sockets are connected, and what each one is owed.

`LiveSession` is the delivery state of one WebSocket connection, with no I/O of its own:
the web layer feeds it client frames and takes from it the frames to write. `Hub` is this
shard's connection directory: it fans durable messages out to the sessions of the members,
and carries receipts, typing and presence.

Delivery is in seq order per conversation with no gap and no duplicate, whether a message
comes from the catch-up read or live. Each session keeps, per conversation, the next seq it
owes; a live message is queued directly only when it is exactly that seq, otherwise the
conversation is marked *behind* and the session asks for the missing range before going
on. Catch-up on connect is the same mechanism: every conversation whose cursor is below
its head starts out behind. The session does no reading itself: the transport asks it
`next_fetch()`, reads that range from the owner (a local read or a mesh request, outside
any commit) and hands the entries back with `fetched()`. The seam between catch-up and
live needs no locking: everything here runs on the event loop, and a message is
published only after it is durable, so the owner always holds what the session asks for.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable

from chatd.domain.models import Conversation, Message
from chatd.protocol import frames
from chatd.protocol.frames import OutFrame


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
    until the next `take_frames`) when there is something to write, something to fetch,
    or the session closed, and then takes the frames. Several sockets' frames are thus
    written in one pass."""

    __slots__ = (
        "_behind",
        "_closed",
        "_early",
        "_fetching",
        "_known_head",
        "_max_queue",
        "_next",
        "_queue",
        "_ready",
        "acked",
        "contacts",
        "device_id",
        "direct_contacts",
        "fetch_batch",
        "fetch_bytes",
        "hidden",
        "hides_last_seen",
        "last_seen_setting",
        "on_ready",
        "opened_id",
        "shows_reads",
        "user_id",
    )

    def __init__(self, *, user_id: int, device_id: int, max_queue: int,
                 on_ready: Callable[[LiveSession], None], opened_id: int = 0,
                 fetch_batch: int = 200, fetch_bytes: int = 256 * 1024) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self._max_queue = max_queue
        self.fetch_batch = fetch_batch
        self.fetch_bytes = fetch_bytes
        self._queue: deque[OutFrame] = deque()
        self.on_ready = on_ready
        #: The lowest message id made after this session opened: this device's own
        #: messages above it were answered on this session (a `sent` frame), and are
        #: not sent back by a catch-up either.
        self.opened_id = opened_id
        self._ready = False  # on_ready was called and take_frames has not run since
        self._next: dict[int, int] = {}
        self._behind: dict[int, None] = {}  # an ordered set
        # The highest seq known to exist per conversation (from fetches and offers).
        self._known_head: dict[int, int] = {}
        self._fetching: int | None = None
        # Until `start`: the lowest seq offered live per conversation (the session is
        # attached before its positions are known, so that nothing slips between).
        self._early: dict[int, int] | None = {}
        self._closed: SessionClosed | None = None
        #: The highest seq this device acknowledged per conversation (to skip no-op acks).
        self.acked: dict[int, int] = {}
        #: Who shares a conversation with this user (told of their presence), as of
        #: connecting.
        self.contacts: set[int] = set()
        #: The user's privacy settings as of connecting (kept current by their profile
        #: changes): whether they see read receipts, and hide their last-seen time.
        self.shows_reads = True
        self.hides_last_seen = False
        #: Privacy (domain/privacy.py `Audience`), as of connecting and kept current by
        #: accepts and blocks: the user's contacts (accepted direct chats), whose
        #: presence they may not be shown, and who sees their last seen.
        self.direct_contacts: set[int] = set()
        self.hidden: set[int] = set()
        self.last_seen_setting = "everyone"

    # -- fed by the hub and the web layer (sync, never blocks) ----------------------------

    def start(self, starts: Iterable[tuple[Conversation, int]],
              cursors: dict[int, int]) -> None:
        """Set the delivery position of each conversation (where the owner said this
        device starts), and the device's cursors (conversation_id -> acknowledged seq)."""
        self.acked = cursors
        early, self._early = self._early or {}, None
        for conv, start in starts:
            self.contacts.update(conv.members)
            head = max(conv.head_seq, self._known_head.get(conv.conversation_id, 0))
            self._set_next(conv.conversation_id, start, head)
            early.pop(conv.conversation_id, None)
        for conversation_id, first_seq in early.items():
            # Offered while starting, in no answer: created or joined meanwhile, or its
            # owner could not be asked. From the device's cursor, else from the first
            # entry seen.
            acked = cursors.get(conversation_id)
            start = first_seq if acked is None else min(acked + 1, first_seq)
            self._set_next(conversation_id, start, self._known_head[conversation_id])
        self.contacts.discard(self.user_id)

    def sync(self, positions: Iterable[tuple[int, int, int]]) -> None:
        """The client says what it holds (a reinstalled app): resend from there.
        `positions` are (conversation, next seq, head seq), checked by the caller."""
        for conversation_id, next_seq, head_seq in positions:
            self._set_next(conversation_id, next_seq, head_seq)

    def offer(self, message: Message, frame: OutFrame) -> None:
        conversation_id = message.conversation_id
        if self._early is not None:
            # Not started: remember it; the catch-up after `start` reads it.
            if message.seq < self._early.get(conversation_id, message.seq + 1):
                self._early[conversation_id] = message.seq
            if message.seq > self._known_head.get(conversation_id, 0):
                self._known_head[conversation_id] = message.seq
            return
        next_seq = self._next.get(conversation_id)
        if next_seq is None:
            # A conversation this session does not follow yet: just created or joined
            # (its first entry for this user is the one that added them), or one whose
            # owner could not be asked at connect (resume after the device's cursor).
            acked = self.acked.get(conversation_id)
            next_seq = message.seq if acked is None else min(acked + 1, message.seq)
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
            if message.seq > self._known_head.get(conversation_id, 0):
                self._known_head[conversation_id] = message.seq
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

    @property
    def closed(self) -> bool:
        return self._closed is not None

    # -- drained by the transport ---------------------------------------------------------

    def take_frames(self, limit: int = 64) -> list[OutFrame]:
        """The frames to write now (at most `limit`, to share one WebSocket message);
        [] when there is nothing. Raises `SessionClosed` when the session must end."""
        self._ready = False
        if self._closed is not None:
            raise self._closed
        count = min(limit, len(self._queue))
        if count == len(self._queue):
            taken = list(self._queue)
            self._queue.clear()
            return taken
        # More remains: ask to be called again (after other sockets had their turn).
        self._signal()
        return [self._queue.popleft() for _ in range(count)]

    def next_fetch(self) -> tuple[int, int] | None:
        """(conversation, after seq) to read next, once what was read before has been
        written; None when nothing is owed or a read is under way. The transport reads
        it and calls `fetched` (or `fetch_failed`)."""
        if self._fetching is not None or not self._behind or self._queue \
                or self._closed is not None:
            return None
        conversation_id = next(iter(self._behind))
        self._fetching = conversation_id
        return conversation_id, self._next[conversation_id] - 1

    def fetched(self, conversation_id: int, messages: list[Message], head_seq: int) -> None:
        """What the owner had after the asked seq, and its head. head_seq -1: the user
        is not a member any more; nothing more of it is read."""
        self._fetching = None
        if head_seq < 0:
            self._behind.pop(conversation_id, None)
            self._next.pop(conversation_id, None)
            self._signal()
            return
        next_seq = self._next.get(conversation_id)
        if next_seq is None:
            return  # forgotten meanwhile
        if not messages and head_seq >= next_seq:
            # Nothing from where we asked up to a head at or past it: the owner floors
            # the read at the user's joining, so what lies between is not theirs.
            next_seq = head_seq + 1
        for message in messages:
            # The owner may start later than asked (never before the user joined): its
            # answer is what this user may see, so the position follows it.
            if message.seq >= next_seq:
                if message.sender_device != self.device_id \
                        or message.message_id < self.opened_id:
                    self._queue.append(frames.message_frame(message))
                next_seq = message.seq + 1
        self._next[conversation_id] = next_seq
        head = max(head_seq, self._known_head.get(conversation_id, 0))
        if next_seq > head:
            self._behind.pop(conversation_id, None)
            self._known_head.pop(conversation_id, None)
        elif not messages:
            # The owner knows no more than we asked, yet a live message said there is
            # more: it is still landing. Try again after what is queued has gone.
            self._behind.pop(conversation_id, None)
            self._behind[conversation_id] = None
        self._signal()

    def follows(self, conversation_id: int) -> bool:
        return conversation_id in self._next

    def following(self) -> list[int]:
        """The conversations this session delivers."""
        return list(self._next)

    def recheck(self, conversation_ids: Iterable[int]) -> None:
        """Ask the owners again whether anything was missed (deliveries may have been
        lost while a link was down); a read that finds nothing new costs one request."""
        for conversation_id in conversation_ids:
            if conversation_id in self._next:
                self._behind[conversation_id] = None
        if self._behind:
            self._signal()

    def fetch_failed(self, conversation_id: int) -> None:
        """The owner could not be reached: the conversation stays behind, to be read
        again later (the transport waits before it asks again)."""
        self._fetching = None

    @property
    def behind(self) -> bool:
        return bool(self._behind)

    def _signal(self) -> None:
        if not self._ready:
            self._ready = True
            self.on_ready(self)

    # -- internals ------------------------------------------------------------------------

    def _set_next(self, conversation_id: int, next_seq: int, head_seq: int) -> None:
        self._next[conversation_id] = next_seq
        if next_seq <= head_seq:
            if head_seq > self._known_head.get(conversation_id, 0):
                self._known_head[conversation_id] = head_seq
            self._behind[conversation_id] = None
            self._signal()


class Hub:
    """This shard's connected sessions by user, and fan-out to them (what the mesh's
    DELIVER brings from other shards lands here too)."""

    def __init__(self) -> None:
        self._sessions: dict[int, set[LiveSession]] = {}
        #: Told of each session attached (True) or detached (False): the push
        #: notifier's device directory (services/push/devices.py).
        self.session_listeners: list[Callable[[LiveSession, bool], None]] = []

    def sessions_of(self, user_id: int) -> set[LiveSession]:
        return self._sessions.get(user_id, set())

    def is_online(self, user_id: int) -> bool:
        return user_id in self._sessions

    def online_users(self) -> list[int]:
        return list(self._sessions)

    def all_sessions(self) -> list[LiveSession]:
        return [session for sessions in self._sessions.values() for session in sessions]

    def attach(self, session: LiveSession) -> bool:
        """Register a session; True if it is the user's first (they came online)."""
        sessions = self._sessions.setdefault(session.user_id, set())
        if session not in sessions:
            for listener in self.session_listeners:
                listener(session, True)
        sessions.add(session)
        return len(sessions) == 1

    def detach(self, session: LiveSession) -> bool:
        """Forget a session; True if it was the user's last (they went offline)."""
        sessions = self._sessions.get(session.user_id)
        if sessions is None:
            return False
        if session in sessions:
            for listener in self.session_listeners:
                listener(session, False)
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

    # -- fan-out to this shard's sessions ---------------------------------------------------

    def deliver_message(self, message: Message, recipients: Iterable[int]) -> None:
        frame: OutFrame | None = None  # built only if someone is connected here
        for user_id in recipients:
            sessions = self._sessions.get(user_id)
            if sessions:
                if frame is None:
                    frame = frames.message_frame(message)
                for session in sessions:
                    session.offer(message, frame)

    def deliver(self, user_ids: Iterable[int], frame: OutFrame) -> None:
        for user_id in user_ids:
            for session in self._sessions.get(user_id, ()):
                session.push(frame)

    def deliver_to_device(self, user_ids: Iterable[int], device_id: int,
                          frame: OutFrame) -> None:
        """To the sessions of one device (of `user_ids`, where it belongs) only."""
        for user_id in user_ids:
            for session in self._sessions.get(user_id, ()):
                if session.device_id == device_id:
                    session.push(frame)

    def deliver_ephemeral(self, user_ids: Iterable[int], frame: OutFrame) -> None:
        """Typing and presence: worth nothing late, so a session with a backlog drops
        them instead of counting them towards its limit (another user's burst of typing
        notices must not get a reader cut off as too slow)."""
        for user_id in user_ids:
            for session in self._sessions.get(user_id, ()):
                session.push_ephemeral(frame)

    def deliver_receipt(self, user_ids: Iterable[int], conversation_id: int, reader: int,
                        delivered_seq: int, read_seq: int | None,
                        delivery_moved: bool) -> None:
        """A receipt for the senders `user_ids`: those who turned read receipts off see
        delivery only (and nothing when only the read watermark moved)."""
        full: OutFrame | None = None
        delivered_only: OutFrame | None = None
        for user_id in user_ids:
            for session in self._sessions.get(user_id, ()):
                if read_seq is None or session.shows_reads:
                    if read_seq is None and not delivery_moved:
                        continue
                    if full is None:
                        full = frames.receipt_frame(conversation_id, reader, delivered_seq,
                                                    read_seq)
                    session.push(full)
                elif delivery_moved:
                    if delivered_only is None:
                        delivered_only = frames.receipt_frame(conversation_id, reader,
                                                              delivered_seq, None)
                    session.push(delivered_only)

    def profile_changed(self, user_id: int, shows_reads: bool, hides_last_seen: bool,
                        last_seen: str | None = None) -> None:
        """Keep the user's own sessions' settings current."""
        for session in self._sessions.get(user_id, ()):
            session.shows_reads = shows_reads
            session.hides_last_seen = hides_last_seen
            session.last_seen_setting = "nobody" if hides_last_seen else (
                last_seen or session.last_seen_setting)

    def privacy_changed(self, user_ids: Iterable[int], user: int, change: str,
                        peer: int) -> None:
        """A pair became contacts ("contact"), or `user` blocked `peer` ("block"): their
        sessions' presence audiences follow at once. (An unblock takes effect at the
        next connection: whether they still share a conversation is not known here.)"""
        for user_id in user_ids:
            other = peer if user_id == user else user
            for session in self._sessions.get(user_id, ()):
                if change == "contact":
                    session.contacts.add(other)
                    session.direct_contacts.add(other)
                    session.hidden.discard(other)
                elif change == "block":
                    session.contacts.discard(other)
                    session.direct_contacts.discard(other)
                    if user_id == peer:
                        session.hidden.add(other)
