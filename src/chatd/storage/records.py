"""Every record chatd stores: one definition per column family, used by reads and writes.

A `Family` names its column family and carries its key layout (encode and decode) and its
value layout (pack and unpack). Values are msgpack arrays of *named* fields, written once
here: `_fields(Model, "a", "b")` packs those attributes in that order and unpacks them by
name, with the key's parts filled in from the key. A record written before a field was
added unpacks with that field's default, so adding a field at the end needs no migration.

| family | key | value |
|---|---|---|
| users | user_id | handle, display_name, password_hash, created_at, status_text, |
| | | hide_last_seen, read_receipts, photo_media_id, last_seen_visibility, |
| | | profile_visibility, groups_add |
| handles | normalised handle (UTF-8) | user_id (8 bytes) |
| devices | user_id, device_id | name, created_at, token_hash |
| tokens | sha256(token) | user_id, device_id, expires_at |
| conversations | conversation_id | kind, name, created_by, created_at, photo_media_id, |
| | | disappearing_s, anyone_sets_timer |
| members | conversation_id, user_id | role, joined_seq |
| user_conversations | user_id, conversation_id | (empty: an index) |
| messages | conversation_id, seq | message_id, sender_id, sender_device, client_msg_id, |
| | | content_type, body, ts, attachments, expires_at, reply_to, mentions, forwarded |
| dedup | conversation_id, sender_id, client_msg_id | seq, message_id, ts |
| watermarks | conversation_id, user_id | delivered_seq, read_seq |
| cursors | device_id, conversation_id | seq acked by that device (8 bytes) |
| last_seen | user_id | ms when the user's last socket closed (8 bytes) |
| meta | a name (UTF-8), e.g. "ring" | msgpack of any shape (`storage/meta.py`) |
| media | media_id | uploader_id, sha256, size, content_type, filename, created_at, |
| | | width, height, thumbnails, own_ref, message_refs |
| blobs | sha256 (hex, ASCII) | size, refs |
| media_unreferenced | created_at, media_id | (empty: uploads no message carries yet) |
| dead_blobs | sha256 (hex, ASCII) | (empty: blobs whose count reached 0, for the GC) |
| quarantine | sha256 (hex, ASCII) | {at, reason} |
| media_usage | user_id | bytes of uploads the user holds (8 bytes) |
| media_refs | conversation_id, media_id | first_seq, audience (the conversation's owner) |
| media_conversations | media_id, conversation_id | True (an index: where a media is referenced) |
| direct_states | conversation_id | requested_by, status, blocked_by (the direct chat's owner) |
| blocks | user_id, blocked user_id | ms when blocked (the blocker's home) |
| invites | conversation_id, user_id | invited_by, created_at (the group's owner) |
| user_invites | user_id, conversation_id | (empty: the owner's index of a user's invites) |
| hidden | conversation_id, user_id, seq | (empty: "delete for me", the entries a user hid) |
| expiries | expires_at, conversation_id, seq | (empty: disappearing messages, for the sweeper) |
| media_releases | conversation_id, media_id | {conversation, senders}: references a deleted |
| | | message held, to drop on the media's shard (services/deletion.py) |
| reactions | conversation_id, target seq, user_id | emoji, seq, ts, expires_at (the |
| | | user's current reaction and the entry that set it) |
| reaction_entries | conversation_id, target seq, entry seq | (empty: every reaction entry |
| | | of a message, tombstoned with it) |
| edits | conversation_id, target seq, edit seq | (empty: a message's edit entries) |
| pins | conversation_id, target seq | seq of the entry that pinned it (8 bytes) |
| uncounted | conversation_id, seq | ordinal among the entries unread counts skip |
| | | (8 bytes; domain/unread.py) |
| abuse | user_id | opened, accepted, declined, blocked, reporters, limited_at, limited_by, |
| | | limit_reason, cleared_at, note (on the user's home) |
| abuse_queue | user_id | (empty: accounts limited or scoring for review, on their home) |
| reports | status (0 open, 1 resolved), report_id | reported_id, reporter_id, conversation_id, |
| | | seq, reason, note, evidence, created_at, message_id, content_type, |
| | | message_text, status, resolved_at, action, resolution_note |
| report_dedup | reported_id, reporter_id, conversation_id, seq | report_id (8 bytes) |
| account_state | user_id | {deactivated_at, erasing_since, erased_at, photo}: on the home |
| exports | export_id (ASCII) | {user_id, created_at, ready, size}: a data export's file |
| email_settings | user_id | {address, pending, enabled, delay_s, previews}: on the home |
| email_digests | user_id | {due, last_sent, mailed, failures}: the next digest, on the home |
| identity_keys | user_id, device_id | curve25519, ed25519, signature, created_at (home) |
| one_time_keys | user_id, device_id, key_id (UTF-8) | key, signature (home) |
| fallback_keys | user_id, device_id | key_id, key, signature, used (home) |
| device_lists | user_id | the user's device-list version (8 bytes; home) |

Ids and seqs in keys are fixed-width big-endian, so byte order is numeric order and a scan
of `conversation_id | seq` yields a log in seq order.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgpack

from chatd.domain.abuse import AbuseRecord
from chatd.domain.e2e_keys import DeviceIdentity, FallbackKey, SignedKey
from chatd.domain.media import BlobRecord, MediaRecord, MediaRef
from chatd.domain.models import (
    Conversation,
    Device,
    Member,
    Message,
    SendResult,
    TokenRecord,
    User,
    Watermark,
)
from chatd.domain.privacy import DirectState, GroupInvite
from chatd.domain.reactions import ReactionRow
from chatd.domain.reports import Report
from chatd.storage.errors import UnstorableValue

K = TypeVar("K")
V = TypeVar("V")

_U64 = struct.Struct(">Q")
_U64_PAIR = struct.Struct(">QQ")
MAX_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Family(Generic[K, V]):
    """One column family: how its keys and values are laid out."""

    name: str
    encode_key: Callable[[K], bytes]
    decode_key: Callable[[bytes], K]
    pack: Callable[[V], bytes]
    #: Rebuilds the value from its key and its packed bytes (key parts are not stored twice).
    unpack: Callable[[K, bytes], V]
    #: Where in the key a conversation id sits (a byte offset), for the records that
    #: belong to one conversation and so to its owner's range: these are the records a
    #: replica keeps (chatd/replication). None: the record is not a conversation's.
    conversation_at: int | None = None


# -- keys ---------------------------------------------------------------------------------


def u64(value: int) -> bytes:
    """An id or seq as a key (or a key prefix)."""
    return _U64.pack(value)


def read_u64(data: bytes, offset: int = 0) -> int:
    value: int = _U64.unpack_from(data, offset)[0]
    return value


def pair(first: int, second: int) -> bytes:
    return _U64_PAIR.pack(first, second)


def read_pair(data: bytes) -> tuple[int, int]:
    first, second = _U64_PAIR.unpack_from(data)
    return first, second


def _dedup_key(key: tuple[int, int, str]) -> bytes:
    conversation_id, sender_id, client_msg_id = key
    return _U64_PAIR.pack(conversation_id, sender_id) + client_msg_id.encode()


def _read_dedup_key(data: bytes) -> tuple[int, int, str]:
    conversation_id, sender_id = read_pair(data)
    return conversation_id, sender_id, data[16:].decode()


def _same(data: bytes) -> bytes:
    return bytes(data)


def _pair_key(key: tuple[int, int]) -> bytes:
    return pair(*key)


# -- values -------------------------------------------------------------------------------

_packer = msgpack.Packer(use_bin_type=True)


def pack(value: Any) -> bytes:
    """msgpack, raising `UnstorableValue` for what it cannot encode."""
    try:
        data: bytes = _packer.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        # (ValueError covers UnicodeEncodeError: a lone surrogate that got this far.)
        _packer.reset()  # a failed pack can leave a half-written buffer behind
        raise UnstorableValue(f"a value could not be stored: {exc}") from None
    return data


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _fields(model: Callable[..., V], *names: str, key: tuple[str | None, ...] = (),
            ) -> tuple[Callable[[V], bytes], Callable[[Any, bytes], V]]:
    """pack/unpack of `model` as a msgpack array of the attributes `names`. The attributes
    named in `key` come from the record's key, part by part (None: a part the model does
    not hold); a single-part key is the value itself, not a tuple."""

    # A tuple of them (msgpack packs it as an array); attrgetter of one name is no tuple.
    fields_of = operator.attrgetter(*names) if len(names) > 1 else (
        lambda value: (getattr(value, names[0]),))

    def pack_value(value: V) -> bytes:
        return pack(fields_of(value))

    def unpack_value(key_value: Any, data: bytes) -> V:
        parts = key_value if len(key) > 1 else (key_value,)
        fields = {name: part for name, part in zip(key, parts, strict=False) if name}
        fields.update(zip(names, unpack(data), strict=False))
        return model(**fields)

    return pack_value, unpack_value


def _u64_value(value: int) -> bytes:
    try:
        return _U64.pack(value)
    except struct.error as exc:
        raise UnstorableValue(f"a value could not be stored: {exc}") from None


def _read_u64_value(_key: Any, data: bytes) -> int:
    return read_u64(data)


def _read_any(_key: Any, data: bytes) -> Any:
    return unpack(data)


def _empty(_value: None) -> bytes:
    return b""


def _read_empty(_key: Any, _data: bytes) -> None:
    return None


# -- the families -------------------------------------------------------------------------

USERS: Family[int, User] = Family(
    "users", u64, read_u64, *_fields(User, "handle", "display_name", "password_hash",
                                     "created_at", "status_text", "hide_last_seen", "read_receipts",
                                     "photo_media_id", "last_seen_visibility",
                                     "profile_visibility", "groups_add", key=("user_id",)))
HANDLES: Family[str, int] = Family(
    "handles", str.encode, bytes.decode, _u64_value, _read_u64_value)
DEVICES: Family[tuple[int, int], Device] = Family(
    "devices", _pair_key, read_pair, *_fields(Device, "name", "created_at", "token_hash",
                                              key=("user_id", "device_id")))
TOKENS: Family[bytes, TokenRecord] = Family(
    "tokens", _same, _same, *_fields(TokenRecord, "user_id", "device_id", "expires_at"))
CONVERSATIONS: Family[int, Conversation] = Family(
    "conversations", u64, read_u64, *_fields(Conversation, "kind", "name", "created_by",
                                             "created_at", "photo_media_id", "disappearing_s",
                                             "anyone_sets_timer", "encrypted",
                                             key=("conversation_id",)),
    conversation_at=0)
MEMBERS: Family[tuple[int, int], Member] = Family(
    "members", _pair_key, read_pair, *_fields(Member, "role", "joined_seq"), conversation_at=0)
#: The owner's index of a user's conversations (ConversationsOf): its rows go with the
#: conversation, so a replica that takes over can answer for the range too.
USER_CONVERSATIONS: Family[tuple[int, int], None] = Family(
    "user_conversations", _pair_key, read_pair, _empty, _read_empty, conversation_at=8)
_pack_full_message, _unpack_message = _fields(
    Message, "message_id", "sender_id", "sender_device", "client_msg_id", "content_type",
    "body", "ts", "attachments", "expires_at", "reply_to", "mentions", "forwarded",
    key=("conversation_id", "seq"))
_pack_media_message, _ = _fields(
    Message, "message_id", "sender_id", "sender_device", "client_msg_id", "content_type",
    "body", "ts", "attachments", "expires_at")
_MESSAGE_FIELDS = operator.attrgetter("message_id", "sender_id", "sender_device",
                                      "client_msg_id", "content_type", "body", "ts")


def _pack_message(message: Message) -> bytes:
    # A message without attachments is stored as before they existed (one field fewer):
    # the common case costs nothing, and old records need no migration.
    # Replies, mentions and forwards (issue 18) add three fields, again only when used;
    # the quote a reply shows is made at read time and never stored (domain/replies.py).
    if message.reply_to or message.mentions or message.forwarded:
        return _pack_full_message(message)
    if not message.attachments and not message.expires_at:
        return pack(_MESSAGE_FIELDS(message))
    return _pack_media_message(message)


def _read_message(key: tuple[int, int], data: bytes) -> Message:
    message = _unpack_message(key, data)
    if isinstance(message.attachments, list):  # msgpack gives a list; the model: a tuple
        object.__setattr__(message, "attachments", tuple(message.attachments))
    if isinstance(message.mentions, list):
        object.__setattr__(message, "mentions", tuple(message.mentions))
    return message


MESSAGES: Family[tuple[int, int], Message] = Family(
    "messages", _pair_key, read_pair, _pack_message, _read_message, conversation_at=0)
DEDUP: Family[tuple[int, int, str], SendResult] = Family(
    "dedup", _dedup_key, _read_dedup_key,
    *_fields(SendResult, "seq", "message_id", "ts", key=("conversation_id", None, None)),
    conversation_at=0)
WATERMARKS: Family[tuple[int, int], Watermark] = Family(
    "watermarks", _pair_key, read_pair, *_fields(Watermark, "delivered_seq", "read_seq"),
    conversation_at=0)
CURSORS: Family[tuple[int, int], int] = Family(
    "cursors", _pair_key, read_pair, _u64_value, _read_u64_value)
LAST_SEEN: Family[int, int] = Family("last_seen", u64, read_u64, _u64_value, _read_u64_value)
#: Facts about the database itself (which ring it was made under), one record per name.
META: Family[str, Any] = Family("meta", str.encode, bytes.decode, pack, _read_any)

#: The families a conversation's owner writes, by name, with where their keys hold the
#: conversation id: what replication ships and copies.
CONVERSATION_FAMILIES: dict[str, int] = {}

# -- media (services/media.py) -------------------------------------------------------------


def _ascii(value: str) -> bytes:
    return value.encode("ascii")


def _read_ascii(data: bytes) -> str:
    return bytes(data).decode("ascii")


def _read_media(key: int, data: bytes) -> MediaRecord:
    record = _unpack_media(key, data)
    if isinstance(record.thumbnails, list):
        object.__setattr__(record, "thumbnails", tuple(record.thumbnails))
    return record


_pack_media, _unpack_media = _fields(
    MediaRecord, "uploader_id", "sha256", "size", "content_type", "filename", "created_at",
    "width", "height", "thumbnails", "own_ref", "message_refs", "photo_refs",
    key=("media_id",))
MEDIA: Family[int, MediaRecord] = Family("media", u64, read_u64, _pack_media, _read_media)
BLOBS: Family[str, BlobRecord] = Family(
    "blobs", _ascii, _read_ascii, *_fields(BlobRecord, "size", "refs", key=("sha256",)))
MEDIA_UNREFERENCED: Family[tuple[int, int], None] = Family(
    "media_unreferenced", _pair_key, read_pair, _empty, _read_empty)
DEAD_BLOBS: Family[str, None] = Family("dead_blobs", _ascii, _read_ascii, _empty, _read_empty)
QUARANTINE: Family[str, Any] = Family("quarantine", _ascii, _read_ascii, pack, _read_any)
MEDIA_USAGE: Family[int, int] = Family("media_usage", u64, read_u64, _u64_value,
                                       _read_u64_value)
#: Keyed by conversation first: replication finds a conversation's records by that prefix.
MEDIA_REFS: Family[tuple[int, int], MediaRef] = Family(
    "media_refs", _pair_key, read_pair, *_fields(MediaRef, "first_seq", "audience", "carriers"),
    conversation_at=0)



def _present(_value: bool) -> bytes:
    return b"\x01"


def _read_present(_key: Any, _data: bytes) -> bool:
    return True


#: True for every row: a read tells a row that exists from one that does not.
MEDIA_CONVERSATIONS: Family[tuple[int, int], bool] = Family(
    "media_conversations", _pair_key, read_pair, _present, _read_present)

# -- privacy (services/direct_requests.py, services/blocks.py, services/invites.py) -------

def _read_direct_state(key: int, data: bytes) -> DirectState:
    state = _unpack_direct_state(key, data)
    state.blocked_by = list(state.blocked_by)
    return state


_pack_direct_state, _unpack_direct_state = _fields(
    DirectState, "requested_by", "status", "blocked_by", key=("conversation_id",))
#: Keyed by the direct conversation's id: on its owner, replicated with it; it may exist
#: before the conversation does (a block of someone never talked to).
DIRECT_STATES: Family[int, DirectState] = Family(
    "direct_states", u64, read_u64, _pack_direct_state, _read_direct_state,
    conversation_at=0)
#: On the blocker's home (not replicated, like the rest of an account).
BLOCKS: Family[tuple[int, int], int] = Family(
    "blocks", _pair_key, read_pair, _u64_value, _read_u64_value)
INVITES: Family[tuple[int, int], GroupInvite] = Family(
    "invites", _pair_key, read_pair,
    *_fields(GroupInvite, "invited_by", "created_at", key=("conversation_id", "user_id")),
    conversation_at=0)
#: The owner's index of a user's invites (as user_conversations): goes with the group.
USER_INVITES: Family[tuple[int, int], None] = Family(
    "user_invites", _pair_key, read_pair, _empty, _read_empty, conversation_at=8)

# -- deletion, disappearing messages, retention (services/deletion.py) -----------------------

_U64_TRIPLE = struct.Struct(">QQQ")


def _triple_key(key: tuple[int, int, int]) -> bytes:
    return _U64_TRIPLE.pack(*key)


def _read_triple(data: bytes) -> tuple[int, int, int]:
    first, second, third = _U64_TRIPLE.unpack_from(data)
    return first, second, third


def triple(first: int, second: int, third: int) -> bytes:
    return _U64_TRIPLE.pack(first, second, third)


#: "Delete for me": (conversation, user, seq) of each entry a user hid from themselves.
HIDDEN: Family[tuple[int, int, int], None] = Family(
    "hidden", _triple_key, _read_triple, _empty, _read_empty, conversation_at=0)
#: Disappearing messages by when they expire, for the owner's sweeper; the conversation
#: id is at byte 8, so the rows replicate with their conversation.
EXPIRIES: Family[tuple[int, int, int], None] = Family(
    "expiries", _triple_key, _read_triple, _empty, _read_empty, conversation_at=8)
#: References of deleted messages still to be dropped on the media's shard:
#: {"conversation": drop the conversation's reference, "senders": [user ids whose own
#: upload reference goes too]}.
MEDIA_RELEASES: Family[tuple[int, int], Any] = Family(
    "media_releases", _pair_key, read_pair, pack, _read_any, conversation_at=0)

# -- reactions, edits, pins, unread (services/reactions.py, edits.py, pins.py) ---------------
# Keyed by conversation first, so they replicate with the log; by target next, so one
# range scan gives a history page's aggregates.

REACTIONS: Family[tuple[int, int, int], ReactionRow] = Family(
    "reactions", _triple_key, _read_triple,
    *_fields(ReactionRow, "emoji", "seq", "ts", "expires_at"), conversation_at=0)
REACTION_ENTRIES: Family[tuple[int, int, int], None] = Family(
    "reaction_entries", _triple_key, _read_triple, _empty, _read_empty, conversation_at=0)
EDITS: Family[tuple[int, int, int], None] = Family(
    "edits", _triple_key, _read_triple, _empty, _read_empty, conversation_at=0)
PINS: Family[tuple[int, int], int] = Family(
    "pins", _pair_key, read_pair, _u64_value, _read_u64_value, conversation_at=0)
UNCOUNTED: Family[tuple[int, int], int] = Family(
    "uncounted", _pair_key, read_pair, _u64_value, _read_u64_value, conversation_at=0)

# -- reports and abuse detection (services/abuse.py), on the reported user's home ------------


def _read_abuse(key: int, data: bytes) -> AbuseRecord:
    record = _unpack_abuse(key, data)
    # msgpack gives lists (and a map): the model holds a tuple.
    object.__setattr__(record, "opened", tuple(record.opened))
    return record


_pack_abuse, _unpack_abuse = _fields(
    AbuseRecord, "opened", "accepted", "declined", "blocked", "reporters", "limited_at",
    "limited_by", "limit_reason", "cleared_at", "note", key=("user_id",))
ABUSE: Family[int, AbuseRecord] = Family("abuse", u64, read_u64, _pack_abuse, _read_abuse)
#: The admin queue's index: a row per account limited or scoring for review.
ABUSE_QUEUE: Family[int, None] = Family("abuse_queue", u64, read_u64, _empty, _read_empty)
#: Keyed by status first, so the open ones are one scan; resolving moves the record.
REPORTS: Family[tuple[int, int], Report] = Family(
    "reports", _pair_key, read_pair, *_fields(
        Report, "reported_id", "reporter_id", "conversation_id", "seq", "reason", "note",
        "evidence", "created_at", "message_id", "content_type", "message_text", "status",
        "resolved_at", "action", "resolution_note", key=(None, "report_id")))
_U64_QUAD = struct.Struct(">QQQQ")


def _quad_key(key: tuple[int, int, int, int]) -> bytes:
    return _U64_QUAD.pack(*key)


def _read_quad_key(data: bytes) -> tuple[int, int, int, int]:
    a, b, c, d = _U64_QUAD.unpack_from(data)
    return a, b, c, d


#: (reported, reporter, conversation, seq) -> the report: a repeated report is the same one.
REPORT_DEDUP: Family[tuple[int, int, int, int], int] = Family(
    "report_dedup", _quad_key, _read_quad_key, _u64_value, _read_u64_value)
# -- export and erase (services/gdpr.py) -----------------------------------------------------

#: What an operator or an erasure did to an account (services/account_admin.py), on the
#: user's home: a msgpack map, so a flag added later needs no migration. No row: an
#: ordinary account.
ACCOUNT_STATE: Family[int, Any] = Family("account_state", u64, read_u64, pack, _read_any)
#: Data exports made on this shard (services/exports.py), by their unguessable id; the
#: zip itself is a file under <data>/exports.
EXPORTS: Family[str, Any] = Family("exports", _ascii, _read_ascii, pack, _read_any)

# -- email notifications (services/email_notify.py) ---------------------------------------------

#: A user's email-notification settings, on their home: a msgpack map.
EMAIL_SETTINGS: Family[int, Any] = Family("email_settings", u64, read_u64, pack, _read_any)
#: A user's digest schedule, on their home: when the next digest is due (kept so that it
#: survives a restart), when the last went out, what it covered.
EMAIL_DIGESTS: Family[int, Any] = Family("email_digests", u64, read_u64, pack, _read_any)

# -- end-to-end keys (services/key_directory.py), on the user's home ------------------------


def _device_key_id_key(key: tuple[int, int, str]) -> bytes:
    user_id, device_id, key_id = key
    return _U64_PAIR.pack(user_id, device_id) + key_id.encode()


def _read_device_key_id_key(data: bytes) -> tuple[int, int, str]:
    user_id, device_id = read_pair(data)
    return user_id, device_id, bytes(data[16:]).decode()


#: A device's identity keys, fixed for its life (an upload of others is refused).
IDENTITY_KEYS: Family[tuple[int, int], DeviceIdentity] = Family(
    "identity_keys", _pair_key, read_pair,
    # The sealed-sender key's two fields came later: older records end before them.
    *_fields(DeviceIdentity, "curve25519", "ed25519", "signature", "created_at",
             "sealed_key", "sealed_signature", key=("user_id", "device_id")))
#: (user, device, key id) -> a one-time key: a claim deletes the first of the device's.
ONE_TIME_KEYS: Family[tuple[int, int, str], SignedKey] = Family(
    "one_time_keys", _device_key_id_key, _read_device_key_id_key,
    *_fields(SignedKey, "key", "signature", key=(None, None, "key_id")))
#: A device's fallback key and whether a claim has handed it out since it was uploaded.
FALLBACK_KEYS: Family[tuple[int, int], FallbackKey] = Family(
    "fallback_keys", _pair_key, read_pair,
    *_fields(FallbackKey, "key_id", "key", "signature", "used"))
#: A user's device-list version: bumped by a device's first identity upload and by a
#: device with keys revoked (8 bytes; no row: 0).
DEVICE_LISTS: Family[int, int] = Family(
    "device_lists", u64, read_u64, _u64_value, _read_u64_value)


def _pair_value(value: tuple[int, int]) -> bytes:
    return _U64_PAIR.pack(*value)


def _read_pair_value(_key: Any, data: bytes) -> tuple[int, int]:
    return read_pair(data)


#: "c:" + a curve25519 key or "e:" + an ed25519 key (base64 text) -> the (user, device)
#: that published it: a home refuses the same identity key for a second device
#: (services/key_directory.py; rebuilt from IDENTITY_KEYS once on a home that predates it).
IDENTITY_OWNERS: Family[str, tuple[int, int]] = Family(
    "identity_owners", str.encode, bytes.decode, _pair_value, _read_pair_value)
E2E_FAMILIES: tuple[Family[Any, Any], ...] = (
    IDENTITY_KEYS, ONE_TIME_KEYS, FALLBACK_KEYS, DEVICE_LISTS, IDENTITY_OWNERS)

#: Every family, in the order the database creates them.
FAMILIES: tuple[Family[Any, Any], ...] = (
    USERS, HANDLES, DEVICES, TOKENS, CONVERSATIONS, MEMBERS, USER_CONVERSATIONS, MESSAGES,
    DEDUP, WATERMARKS, CURSORS, LAST_SEEN, META, MEDIA, BLOBS, MEDIA_UNREFERENCED,
    DEAD_BLOBS, QUARANTINE, MEDIA_USAGE, MEDIA_REFS, MEDIA_CONVERSATIONS,
    DIRECT_STATES, BLOCKS, INVITES, USER_INVITES, HIDDEN, EXPIRIES,
    MEDIA_RELEASES, ABUSE, ABUSE_QUEUE, REPORTS, REPORT_DEDUP, REACTIONS, REACTION_ENTRIES,
    EDITS, PINS, UNCOUNTED, ACCOUNT_STATE, EXPORTS,
    EMAIL_SETTINGS, EMAIL_DIGESTS)
FAMILIES = FAMILIES + E2E_FAMILIES
CONVERSATION_FAMILIES.update(
    (family.name, family.conversation_at) for family in FAMILIES
    if family.conversation_at is not None)

# -- notifications (services/notify_prefs.py, services/push/), on the user's home -------------
# Not a conversation's records: they live with the rest of the account and are not
# replicated with any log.

#: (user, conversation) -> muted until (ms since the epoch); no row: not muted.
NOTIFY_MUTES: Family[tuple[int, int], int] = Family(
    "notify_mutes", _pair_key, read_pair, _u64_value, _read_u64_value)
#: user -> {"previews": bool}: a msgpack map, so a setting added later needs no migration.
NOTIFY_PREFS: Family[int, Any] = Family("notify_prefs", u64, read_u64, pack, _read_any)
#: (user, subscription id) -> {kind, device_id, created_at, endpoint, p256dh, auth} for
#: Web Push or {kind, device_id, created_at, url, pushkey, app_id} for a gateway.
PUSH_SUBSCRIPTIONS: Family[tuple[int, int], Any] = Family(
    "push_subscriptions", _pair_key, read_pair, pack, _read_any)
FAMILIES += (NOTIFY_MUTES, NOTIFY_PREFS, PUSH_SUBSCRIPTIONS)

# -- end-to-end encryption relay (services/to_device.py, services/sealed_sender.py) ----------
# On the target user's home, not replicated (like the rest of an account).

#: A device's to-device queue: (user, device, id) -> [sender user (0: sealed, no sender),
#: sender device, type, content]; deleted when the device acknowledges it.
TO_DEVICE: Family[tuple[int, int, int], Any] = Family(
    "to_device", _triple_key, _read_triple, pack, _read_any)
#: The last id given in a device's queue (ids keep growing after the queue empties).
TO_DEVICE_HEADS: Family[tuple[int, int], int] = Family(
    "to_device_heads", _pair_key, read_pair, _u64_value, _read_u64_value)


def _txn_key(key: tuple[int, int, str]) -> bytes:
    sender, device, txn_id = key
    return _U64_PAIR.pack(sender, device) + txn_id.encode()


def _read_txn_key(data: bytes) -> tuple[int, int, str]:
    sender, device = read_pair(data)
    return sender, device, bytes(data[16:]).decode()


#: (sender user, sender device, txn_id) -> [ms, messages queued here]: a retried
#: POST /to_device queues nothing twice (the newest few hundred per sending device).
TO_DEVICE_TXNS: Family[tuple[int, int, str], Any] = Family(
    "to_device_txns", _txn_key, _read_txn_key, pack, _read_any)
#: A user's 16-byte unidentified access key (sealed sender), on their home.
ACCESS_KEYS: Family[int, bytes] = Family("access_keys", u64, read_u64, pack, _read_any)
FAMILIES = (*FAMILIES, TO_DEVICE, TO_DEVICE_HEADS, TO_DEVICE_TXNS, ACCESS_KEYS)
