"""`Store`: typed reads and batched writes of chatd's records over one RocksDB.

Reads are point lookups and short range scans made directly from the event loop: they are
microseconds each (see docs/architecture.md). Writes only ever go through a `Batch`, so a
command's effects land together or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import msgpack
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

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
from chatd.errors import UnstorableValue
from chatd.storage import keys

_packer = msgpack.Packer(use_bin_type=True)


def _pack(value: Any) -> bytes:
    try:
        data: bytes = _packer.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        # (ValueError covers UnicodeEncodeError: a lone surrogate that got this far.)
        # msgpack's Packer keeps a half-written buffer after a failure: start clean.
        _packer.reset()
        raise UnstorableValue(f"a value could not be stored: {exc}") from None
    return data


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class Batch:
    """The writes of one or more commands, applied atomically by `Store.write`.

    Operations are buffered so that a command that fails halfway can be taken back out
    (`mark` / `rollback_to`) without touching the commands before it. `after_commit`
    callbacks run, in order, only once the batch is durable: that is where fan-out and
    other effects that must never precede durability are hooked in. `before_write`
    callbacks run once all commands are in, just before the write: state that many
    commands of a batch change (a receipt watermark) is written there once, at its final
    value, instead of once per command.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._operations: list[tuple[str, bytes, bytes | None]] = []
        self.after_commit: list[Callable[[], None]] = []
        self.before_write: list[Callable[[], None]] = []
        self._seen: dict[Hashable, None] = {}

    @property
    def operations(self) -> int:
        return len(self._operations)

    def first_time(self, key: Hashable) -> bool:
        """True the first time `key` is named in this batch: for per-batch bookkeeping."""
        if key in self._seen:
            return False
        self._seen[key] = None
        return True

    def mark(self) -> tuple[int, int, int, int]:
        return (len(self._operations), len(self.after_commit), len(self.before_write),
                len(self._seen))

    def rollback_to(self, mark: tuple[int, int, int, int]) -> None:
        del self._operations[mark[0]:]
        del self.after_commit[mark[1]:]
        del self.before_write[mark[2]:]
        while len(self._seen) > mark[3]:
            self._seen.popitem()

    def _put(self, family: str, key: bytes, value: bytes) -> None:
        self._operations.append((family, key, value))

    def _delete(self, family: str, key: bytes) -> None:
        self._operations.append((family, key, None))

    def _to_write_batch(self) -> WriteBatch:
        handles = self._store._handles
        batch = WriteBatch(raw_mode=True)
        for family, key, value in self._operations:
            if value is None:
                batch.delete(key, handles[family])
            else:
                batch.put(key, value, handles[family])
        return batch

    def put_user(self, user: User) -> None:
        value = [user.handle, user.display_name, user.password_hash, user.created_at,
                 user.status_text, user.hide_last_seen]
        self._put("users", keys.u64(user.user_id), _pack(value))

    def put_handle(self, handle: str, user_id: int) -> None:
        self._put("handles", keys.handle_key(handle), keys.u64(user_id))

    def put_device(self, device: Device) -> None:
        value = [device.name, device.created_at, device.token_hash]
        self._put("devices", keys.pair(device.user_id, device.device_id), _pack(value))

    def delete_device(self, device: Device) -> None:
        """The device, its token and its delivery cursors."""
        self._delete("devices", keys.pair(device.user_id, device.device_id))
        self._delete("tokens", device.token_hash)
        for conversation_id in self._store.cursors(device.device_id):
            self._delete("cursors", keys.pair(device.device_id, conversation_id))

    def put_token(self, token_hash: bytes, record: TokenRecord) -> None:
        value = [record.user_id, record.device_id, record.expires_at]
        self._put("tokens", token_hash, _pack(value))

    def put_conversation(self, conv: Conversation) -> None:
        value = [conv.kind, conv.name, conv.created_by, conv.created_at]
        self._put("conversations", keys.u64(conv.conversation_id), _pack(value))

    def put_member(self, conversation_id: int, user_id: int, member: Member) -> None:
        value = _pack([member.role, member.joined_seq])
        self._put("members", keys.pair(conversation_id, user_id), value)
        self._put("user_conversations", keys.pair(user_id, conversation_id), b"")

    def delete_member(self, conversation_id: int, user_id: int) -> None:
        self._delete("members", keys.pair(conversation_id, user_id))
        self._delete("user_conversations", keys.pair(user_id, conversation_id))
        self._delete("watermarks", keys.pair(conversation_id, user_id))

    def put_message(self, message: Message) -> None:
        value = [message.message_id, message.sender_id, message.sender_device,
                 message.client_msg_id, message.content_type, message.body, message.ts]
        self._put("messages", keys.message_key(message.conversation_id, message.seq), _pack(value))
        if message.client_msg_id:
            dedup = keys.dedup_key(message.conversation_id, message.sender_id,
                                   message.client_msg_id)
            self._put("dedup", dedup, _pack([message.seq, message.message_id, message.ts]))

    def put_cursor(self, device_id: int, conversation_id: int, seq: int) -> None:
        self._put("cursors", keys.pair(device_id, conversation_id), keys.u64(seq))

    def put_last_seen(self, user_id: int, ts: int) -> None:
        self._put("last_seen", keys.u64(user_id), keys.u64(ts))

    def put_watermark(self, conversation_id: int, user_id: int, mark: Watermark) -> None:
        value = [mark.delivered_seq, mark.read_seq]
        self._put("watermarks", keys.pair(conversation_id, user_id), _pack(value))


class Store:
    def __init__(self, db: Rdict, sync: bool) -> None:
        self._db = db
        self._families = {name: db.get_column_family(name) for name in keys.COLUMN_FAMILIES}
        self._handles = {name: db.get_column_family_handle(name) for name in keys.COLUMN_FAMILIES}
        self._write_options = WriteOptions()
        self._write_options.sync = sync
        self.sync = sync

    @classmethod
    def open(cls, path: str, *, sync: bool = True) -> Store:
        os.makedirs(path, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        families = {name: Options(raw_mode=True) for name in keys.COLUMN_FAMILIES}
        db = Rdict(path, options, column_families=families)
        return cls(db, sync)

    def close(self) -> None:
        # RocksDB keeps its lock while any column-family view or handle is alive.
        self._families.clear()
        self._handles.clear()
        self._db.close()

    # -- writes ---------------------------------------------------------------------------

    def batch(self) -> Batch:
        return Batch(self)

    def write(self, batch: Batch) -> None:
        """Apply a batch atomically; durable on return when the store syncs."""
        for callback in batch.before_write:
            callback()
        batch.before_write.clear()
        if batch.operations:
            self._db.write(batch._to_write_batch(), self._write_options)

    # -- reads ----------------------------------------------------------------------------

    def _get(self, family: str, key: bytes) -> bytes | None:
        value: bytes | None = self._families[family].get(key)
        return value

    def _scan_prefix(self, family: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        iterator = self._families[family].iter()
        iterator.seek(prefix)
        while iterator.valid():
            key: bytes = iterator.key()
            if not key.startswith(prefix):
                break
            yield key, iterator.value()
            iterator.next()

    def get_user(self, user_id: int) -> User | None:
        raw = self._get("users", keys.u64(user_id))
        if raw is None:
            return None
        handle, display_name, password_hash, created_at, status_text, hide = _unpack(raw)
        return User(user_id, handle, display_name, password_hash, created_at, status_text, hide)

    def user_id_for_handle(self, handle: str) -> int | None:
        raw = self._get("handles", keys.handle_key(handle))
        return None if raw is None else keys.read_u64(raw)

    def get_token(self, token_hash: bytes) -> TokenRecord | None:
        raw = self._get("tokens", token_hash)
        if raw is None:
            return None
        user_id, device_id, expires_at = _unpack(raw)
        return TokenRecord(user_id, device_id, expires_at)

    def tokens_page(self, after: bytes, limit: int) -> list[tuple[bytes, TokenRecord]]:
        """Up to `limit` token records with hashes above `after`, in hash order: the
        expiry sweep walks the family a page at a time."""
        iterator = self._families["tokens"].iter()
        iterator.seek(after + b"\x00")
        page: list[tuple[bytes, TokenRecord]] = []
        while iterator.valid() and len(page) < limit:
            user_id, device_id, expires_at = _unpack(iterator.value())
            page.append((bytes(iterator.key()), TokenRecord(user_id, device_id, expires_at)))
            iterator.next()
        return page

    def get_device(self, user_id: int, device_id: int) -> Device | None:
        raw = self._get("devices", keys.pair(user_id, device_id))
        if raw is None:
            return None
        name, created_at, token_hash = _unpack(raw)
        return Device(user_id, device_id, name, created_at, token_hash)

    def list_devices(self, user_id: int) -> list[Device]:
        devices = []
        for key, raw in self._scan_prefix("devices", keys.u64(user_id)):
            name, created_at, token_hash = _unpack(raw)
            devices.append(Device(user_id, keys.read_u64(key, 8), name, created_at, token_hash))
        return devices

    def load_conversation(self, conversation_id: int) -> Conversation | None:
        """The conversation with its members (in join order), their watermarks and the seq
        at the head of its log."""
        prefix = keys.u64(conversation_id)
        raw = self._get("conversations", prefix)
        if raw is None:
            return None
        kind, name, created_by, created_at = _unpack(raw)
        joined: list[tuple[int, int, Member]] = []
        for key, value in self._scan_prefix("members", prefix):
            role, joined_seq = _unpack(value)
            joined.append((joined_seq, keys.read_u64(key, 8), Member(role, joined_seq)))
        joined.sort(key=lambda entry: entry[:2])
        watermarks = {}
        for key, value in self._scan_prefix("watermarks", prefix):
            delivered, read = _unpack(value)
            watermarks[keys.read_u64(key, 8)] = Watermark(delivered, read)
        head_seq, last_ts = self._log_head(conversation_id)
        return Conversation(conversation_id, kind, name, created_by, created_at,
                            head_seq=head_seq, last_ts=last_ts or created_at,
                            members={user_id: member for _, user_id, member in joined},
                            watermarks=watermarks)

    def _log_head(self, conversation_id: int) -> tuple[int, int]:
        """(seq, ts) of the newest entry in a conversation's log, (0, 0) when empty."""
        iterator = self._families["messages"].iter()
        iterator.seek_for_prev(keys.message_key(conversation_id, keys.MAX_U64))
        if not iterator.valid():
            return 0, 0
        key: bytes = iterator.key()
        if keys.read_u64(key) != conversation_id:
            return 0, 0
        ts: int = _unpack(iterator.value())[-1]
        return keys.read_u64(key, 8), ts

    def conversations_of(self, user_id: int) -> list[int]:
        return [keys.read_u64(key, 8)
                for key, _ in self._scan_prefix("user_conversations", keys.u64(user_id))]

    def cursors(self, device_id: int) -> dict[int, int]:
        """conversation_id -> the seq this device has acknowledged."""
        return {keys.read_u64(key, 8): keys.read_u64(value)
                for key, value in self._scan_prefix("cursors", keys.u64(device_id))}

    def last_seen(self, user_id: int) -> int | None:
        raw = self._get("last_seen", keys.u64(user_id))
        return None if raw is None else keys.read_u64(raw)

    def get_sent(self, conversation_id: int, sender_id: int,
                 client_msg_id: str) -> SendResult | None:
        raw = self._get("dedup", keys.dedup_key(conversation_id, sender_id, client_msg_id))
        if raw is None:
            return None
        seq, message_id, ts = _unpack(raw)
        return SendResult(message_id, conversation_id, seq, ts)

    def get_message(self, conversation_id: int, seq: int) -> Message | None:
        rows = self.read_messages(conversation_id, after=seq - 1, before=seq + 1, limit=1,
                                  newest_first=False)
        return rows[0] if rows else None

    def read_messages(self, conversation_id: int, *, after: int, before: int | None,
                      limit: int, newest_first: bool) -> list[Message]:
        """Messages with after < seq < before (no upper bound with None), at most `limit`,
        taken from the oldest end (or the newest end with `newest_first`); always returned
        in ascending seq order."""
        if before is None:
            before = keys.MAX_U64
        iterator = self._families["messages"].iter()
        messages: list[Message] = []
        if newest_first:
            iterator.seek_for_prev(keys.message_key(conversation_id, before - 1))
        else:
            iterator.seek(keys.message_key(conversation_id, after + 1))
        while iterator.valid() and len(messages) < limit:
            key: bytes = iterator.key()
            conv, seq = keys.read_u64(key), keys.read_u64(key, 8)
            if conv != conversation_id or not after < seq < before:
                break
            message_id, sender, device, client_msg_id, content_type, body, ts = _unpack(
                iterator.value())
            messages.append(Message(message_id, conversation_id, seq, sender, device,
                                    client_msg_id, content_type, body, ts))
            if newest_first:
                iterator.prev()
            else:
                iterator.next()
        if newest_first:
            messages.reverse()
        return messages

