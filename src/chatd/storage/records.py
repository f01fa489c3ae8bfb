"""Every record chatd stores: one definition per column family, used by reads and writes.

A `Family` names its column family and carries its key layout (encode and decode) and its
value layout (pack and unpack). Values are msgpack arrays of *named* fields, written once
here: `_fields(Model, "a", "b")` packs those attributes in that order and unpacks them by
name, with the key's parts filled in from the key. A record written before a field was
added unpacks with that field's default, so adding a field at the end needs no migration.

| family | key | value |
|---|---|---|
| users | user_id | handle, display_name, password_hash, created_at, status_text, |
| | | hide_last_seen, read_receipts |
| handles | normalised handle (UTF-8) | user_id (8 bytes) |
| devices | user_id, device_id | name, created_at, token_hash |
| tokens | sha256(token) | user_id, device_id, expires_at |
| conversations | conversation_id | kind, name, created_by, created_at |
| members | conversation_id, user_id | role, joined_seq |
| user_conversations | user_id, conversation_id | (empty: an index) |
| messages | conversation_id, seq | message_id, sender_id, sender_device, client_msg_id, |
| | | content_type, body, ts |
| dedup | conversation_id, sender_id, client_msg_id | seq, message_id, ts |
| watermarks | conversation_id, user_id | delivered_seq, read_seq |
| cursors | device_id, conversation_id | seq acked by that device (8 bytes) |
| last_seen | user_id | ms when the user's last socket closed (8 bytes) |
| meta | a name (UTF-8), e.g. "ring" | msgpack of any shape (`storage/meta.py`) |

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
                                     key=("user_id",)))
HANDLES: Family[str, int] = Family(
    "handles", str.encode, bytes.decode, _u64_value, _read_u64_value)
DEVICES: Family[tuple[int, int], Device] = Family(
    "devices", _pair_key, read_pair, *_fields(Device, "name", "created_at", "token_hash",
                                              key=("user_id", "device_id")))
TOKENS: Family[bytes, TokenRecord] = Family(
    "tokens", _same, _same, *_fields(TokenRecord, "user_id", "device_id", "expires_at"))
CONVERSATIONS: Family[int, Conversation] = Family(
    "conversations", u64, read_u64, *_fields(Conversation, "kind", "name", "created_by",
                                             "created_at", key=("conversation_id",)),
    conversation_at=0)
MEMBERS: Family[tuple[int, int], Member] = Family(
    "members", _pair_key, read_pair, *_fields(Member, "role", "joined_seq"), conversation_at=0)
#: The owner's index of a user's conversations (ConversationsOf): its rows go with the
#: conversation, so a replica that takes over can answer for the range too.
USER_CONVERSATIONS: Family[tuple[int, int], None] = Family(
    "user_conversations", _pair_key, read_pair, _empty, _read_empty, conversation_at=8)
MESSAGES: Family[tuple[int, int], Message] = Family(
    "messages", _pair_key, read_pair,
    *_fields(Message, "message_id", "sender_id", "sender_device", "client_msg_id",
             "content_type", "body", "ts", key=("conversation_id", "seq")),
    conversation_at=0)
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

#: Every family, in the order the database creates them.
FAMILIES: tuple[Family[Any, Any], ...] = (
    USERS, HANDLES, DEVICES, TOKENS, CONVERSATIONS, MEMBERS, USER_CONVERSATIONS, MESSAGES,
    DEDUP, WATERMARKS, CURSORS, LAST_SEEN, META)
CONVERSATION_FAMILIES.update(
    (family.name, family.conversation_at) for family in FAMILIES
    if family.conversation_at is not None)
