"""Megolm group sessions: one outbound session per (conversation, this device), and the
inbound sessions other devices shared with us.

Rules:
- Rotation. An outbound session is replaced after `ROTATE_AFTER_MESSAGES` (100) messages,
  after `ROTATE_AFTER_MS` (a week), and at once when a member leaves or is removed (seen
  from the log's `chatd/system` entries) or a member's device goes away: whoever held the
  old session key can read everything encrypted with it, so nothing more is.
- Sharing. A new session's key is shared (over Olm) with every current member device;
  a device that appears later gets the key from the ratchet's current index, so it cannot
  read what came before it.
- Replay. Megolm itself accepts the same ciphertext any number of times, so each
  (session id, message index) is remembered with the message that first carried it (its
  conversation and seq); the same pair under another message is a replay. The same
  message delivered again (a reconnect) is not.
- Binding. An inbound session is bound to the conversation and the sender device that
  shared it: a ciphertext presented in another conversation or by another sender fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack
import vodozemac

from chatd.e2e.errors import DecryptionError, ForgedMessage, MissingKeys, ReplayError

ROTATE_AFTER_MESSAGES = 100
ROTATE_AFTER_MS = 7 * 24 * 3600 * 1000

#: `chatd/system` events after which the remaining members' next message needs a new
#: session (someone who held the old key is gone).
ROTATING_EVENTS = frozenset({"members_removed", "member_left", "member_erased"})


def rotation_due_after(system_body: object) -> bool:
    """Whether a `chatd/system` entry's body removes someone from the conversation."""
    return isinstance(system_body, dict) and system_body.get("event") in ROTATING_EVENTS


@dataclass
class Outbound:
    conversation_id: str
    session: vodozemac.GroupSession
    created_ms: int
    #: "user_id/device_id" of every device the key was shared with.
    shared_with: set[str] = field(default_factory=set)

    def expired(self, now_ms: int) -> bool:
        return (self.session.message_index >= ROTATE_AFTER_MESSAGES
                or now_ms - self.created_ms >= ROTATE_AFTER_MS)

    def to_bytes(self, key: bytes) -> bytes:
        data: bytes = msgpack.packb([self.conversation_id, self.session.pickle(key),
                                     self.created_ms, sorted(self.shared_with)],
                                    use_bin_type=True)
        return data

    @classmethod
    def from_bytes(cls, data: bytes, key: bytes) -> Outbound:
        conversation_id, pickle, created_ms, shared = msgpack.unpackb(data, raw=False)
        return cls(conversation_id, vodozemac.GroupSession.from_pickle(pickle, key),
                   created_ms, set(shared))


@dataclass
class Inbound:
    conversation_id: str
    sender_user_id: str
    sender_device_id: str
    #: The sharing device's curve25519 key (the Olm session the key came over).
    sender_key: str
    session: vodozemac.InboundGroupSession
    #: message index -> "conversation_id:seq" of the message that carried it.
    seen: dict[int, str] = field(default_factory=dict)

    def to_bytes(self, key: bytes) -> bytes:
        data: bytes = msgpack.packb([self.conversation_id, self.sender_user_id,
                                     self.sender_device_id, self.sender_key,
                                     self.session.pickle(key), self.seen],
                                    use_bin_type=True)
        return data

    @classmethod
    def from_bytes(cls, data: bytes, key: bytes) -> Inbound:
        conv, user, device, sender_key, pickle, seen = msgpack.unpackb(
            data, raw=False, strict_map_key=False)
        return cls(conv, user, device, sender_key,
                   vodozemac.InboundGroupSession.from_pickle(pickle, key),
                   {int(index): ref for index, ref in seen.items()})


class MegolmSessions:
    def __init__(self) -> None:
        self.outbound: dict[str, Outbound] = {}
        self.inbound: dict[str, Inbound] = {}
        #: conversation ids / session ids changed since the caller last saved them.
        self.dirty_outbound: set[str] = set()
        self.dirty_inbound: set[str] = set()

    # -- sending --------------------------------------------------------------------------

    def current(self, conversation_id: str, now_ms: int) -> Outbound | None:
        """The session to encrypt with, or None when a new one is needed."""
        outbound = self.outbound.get(conversation_id)
        if outbound is None or outbound.expired(now_ms):
            return None
        return outbound

    def rotate(self, conversation_id: str) -> None:
        """Forget the outbound session: the next message starts a new one."""
        if self.outbound.pop(conversation_id, None) is not None:
            self.dirty_outbound.add(conversation_id)

    def new_outbound(self, conversation_id: str, now_ms: int, *, my_user_id: str,
                     my_device_id: str, my_key: str) -> Outbound:
        outbound = Outbound(conversation_id, vodozemac.GroupSession(), now_ms)
        self.outbound[conversation_id] = outbound
        self.dirty_outbound.add(conversation_id)
        # Our own copy, so this device reads its own messages in history.
        self.add_inbound(conversation_id, outbound.session.session_key.to_base64(),
                         sender_user_id=my_user_id, sender_device_id=my_device_id,
                         sender_key=my_key)
        return outbound

    def encrypt(self, outbound: Outbound, plaintext: bytes) -> bytes:
        self.dirty_outbound.add(outbound.conversation_id)
        return outbound.session.encrypt(plaintext).to_bytes()

    # -- receiving ------------------------------------------------------------------------

    def add_inbound(self, conversation_id: str, session_key: str, *, sender_user_id: str,
                    sender_device_id: str, sender_key: str) -> str:
        """Keep a session shared with us; returns its id. A session we hold already keeps
        the copy that reaches further back (a re-share cannot widen or narrow it)."""
        try:
            session = vodozemac.InboundGroupSession(vodozemac.SessionKey(session_key))
        except (vodozemac.SessionKeyDecodeException, ValueError) as exc:
            raise DecryptionError(f"not a Megolm session key ({exc})") from None
        known = self.inbound.get(session.session_id)
        if known is not None:
            if (known.sender_key, known.conversation_id) != (sender_key, conversation_id):
                raise ForgedMessage("a Megolm session id already bound to another sender "
                                    "or conversation")
            if known.session.first_known_index <= session.first_known_index:
                return session.session_id
            session_record = Inbound(conversation_id, sender_user_id, sender_device_id,
                                     sender_key, session, known.seen)
        else:
            session_record = Inbound(conversation_id, sender_user_id, sender_device_id,
                                     sender_key, session)
        self.inbound[session.session_id] = session_record
        self.dirty_inbound.add(session.session_id)
        return session.session_id

    def decrypt(self, session_id: str, ciphertext: bytes, *, conversation_id: str,
                sender_user_id: str, ref: str) -> tuple[bytes, Inbound]:
        """Decrypt a message carried as `ref` ("conversation_id:seq") in
        `conversation_id`, sent (per the server) by `sender_user_id`."""
        inbound = self.inbound.get(session_id)
        if inbound is None:
            raise MissingKeys(f"Megolm session {session_id} has not been shared with us")
        if inbound.conversation_id != conversation_id:
            raise ForgedMessage("this Megolm session belongs to another conversation")
        if inbound.sender_user_id != sender_user_id:
            raise ForgedMessage("this Megolm session belongs to another sender")
        try:
            message = vodozemac.MegolmMessage.from_bytes(ciphertext)
        except (vodozemac.DecodeException, ValueError) as exc:
            raise DecryptionError(f"not a Megolm message ({exc})") from None
        try:
            decrypted = inbound.session.decrypt(message)
        except vodozemac.MegolmDecryptionException as exc:
            if message.message_index() < inbound.session.first_known_index:
                # Encrypted before the index we were given: from before we joined.
                raise DecryptionError(
                    "this message predates the Megolm key we were given") from None
            raise DecryptionError(f"Megolm message does not decrypt ({exc})") from None
        first = inbound.seen.setdefault(decrypted.message_index, ref)
        if first != ref:
            raise ReplayError(f"Megolm index {decrypted.message_index} of this session "
                              f"was already used by message {first}")
        self.dirty_inbound.add(session_id)
        return decrypted.plaintext, inbound
