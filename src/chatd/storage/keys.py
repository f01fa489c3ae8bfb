"""Every RocksDB key chatd writes, built in one place.

Ids and seqs are fixed-width big-endian unsigned integers, so byte order is numeric order
and a range scan over `conversation_id | seq` yields the log in seq order. Each column
family holds one kind of record:

| column family        | key                                     | value (msgpack array)                     |
|----------------------|-----------------------------------------|-------------------------------------------|
| users                | user_id                                 | handle, display_name, pw_hash, created_at, status_text, hide_last_seen |
| handles              | normalised handle (UTF-8)               | user_id (8 bytes)                         |
| devices              | user_id, device_id                      | name, created_at, token_hash              |
| tokens               | sha256(token)                           | user_id, device_id, expires_at            |
| conversations        | conversation_id                         | kind, name, created_by, created_at        |
| members              | conversation_id, user_id                | role, joined_seq                          |
| user_conversations   | user_id, conversation_id                | (empty)                                   |
| messages             | conversation_id, seq                    | message_id, sender, device, client_msg_id, content_type, body, ts |
| dedup                | conversation_id, sender_id, client_msg_id | seq, message_id, ts                     |
| watermarks           | conversation_id, user_id                | delivered_seq, read_seq                   |
| cursors              | device_id, conversation_id              | seq acked by that device (8 bytes)        |
| last_seen            | user_id                                 | ms when the user's last socket closed (8 bytes) |
"""

from __future__ import annotations

import struct

COLUMN_FAMILIES = (
    "users",
    "handles",
    "devices",
    "tokens",
    "conversations",
    "members",
    "user_conversations",
    "messages",
    "dedup",
    "watermarks",
    "cursors",
    "last_seen",
)

_U64 = struct.Struct(">Q")
_U64_PAIR = struct.Struct(">QQ")
ID_WIDTH = 8
MAX_U64 = (1 << 64) - 1


def u64(value: int) -> bytes:
    return _U64.pack(value)


def read_u64(data: bytes, offset: int = 0) -> int:
    value: int = _U64.unpack_from(data, offset)[0]
    return value


def pair(first: int, second: int) -> bytes:
    """`user|device`, `conversation|user`, `conversation|seq` and the like."""
    return _U64_PAIR.pack(first, second)


def handle_key(handle: str) -> bytes:
    return handle.encode()


def message_key(conversation_id: int, seq: int) -> bytes:
    return _U64_PAIR.pack(conversation_id, seq)


def dedup_key(conversation_id: int, sender_id: int, client_msg_id: str) -> bytes:
    return _U64_PAIR.pack(conversation_id, sender_id) + client_msg_id.encode()

