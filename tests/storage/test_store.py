from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from chatd.domain.abuse import AbuseRecord
from chatd.domain.e2e_keys import DeviceIdentity, FallbackKey, SignedKey
from chatd.domain.media import BlobRecord, MediaRecord, MediaRef, Thumbnail
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
from chatd.storage import Batch, Store, records
from chatd.storage import store as store_module
from chatd.storage.errors import UnstorableValue
from chatd.storage.records import pair, u64


def message(conv: int, seq: int, body: str | bytes = "hi") -> Message:
    return Message(seq * 1000, conv, seq, 7, 8, f"c{seq}", "text/plain", body, seq * 10)


def test_messages_with_attachments_round_trip(tmp_path: Path) -> None:
    attachment = {"media_id": 9, "kind": "image", "content_type": "image/png", "size": 10,
                  "sha256": "ab" * 32, "filename": "p.png", "width": 4, "height": 3,
                  "thumbnails": [96]}
    plain = message(5, 1)
    carrying = Message(2000, 5, 2, 7, 8, "c2", "text/plain", "see", 20, (attachment,))
    store = Store.open(str(tmp_path))
    try:
        batch = Batch()
        batch.put(records.MESSAGES, (5, 1), plain)
        batch.put(records.MESSAGES, (5, 2), carrying)
        store.write(batch)
        assert store.get(records.MESSAGES, (5, 1)) == plain
        assert store.get(records.MESSAGES, (5, 2)) == carrying
        # Without attachments a message is stored as before they existed.
        assert len(records.unpack(records.MESSAGES.pack(plain))) == 7
    finally:
        store.close()


def test_every_family_round_trips_and_survives_reopen(tmp_path: Path) -> None:
    rows: list[tuple[records.Family, object, object]] = [  # type: ignore[type-arg]
        (records.USERS, 1, User(1, "alice", "Alice", b"hash", 100, "hi", True, True, 0,
                                 "contacts", "nobody", "contacts")),
        (records.HANDLES, "alice", 1),
        (records.DEVICES, (1, 2), Device(1, 2, "phone", 101, b"t" * 32)),
        (records.TOKENS, b"t" * 32, TokenRecord(1, 2, 999)),
        (records.CONVERSATIONS, 5, Conversation(5, "group", "G", 1, 50, disappearing_s=86_400,
                                                anyone_sets_timer=True)),
        (records.MEMBERS, (5, 1), Member("admin", 1)),
        (records.USER_CONVERSATIONS, (1, 5), None),
        (records.MESSAGES, (5, 1), message(5, 1, b"\x00\xff")),
        (records.DEDUP, (5, 7, "c1"), SendResult(1000, 5, 1, 10)),
        (records.WATERMARKS, (5, 1), Watermark(2, 1)),
        (records.CURSORS, (2, 5), 1),
        (records.LAST_SEEN, 1, 12345),
        (records.META, "ring", {"signature": "abc", "shard": "a", "shards": ["a", "b"]}),
        (records.MEDIA, 9, MediaRecord(9, 1, "ab" * 32, 10, "image/png", "p.png", 5, 4, 3, (
            Thumbnail(96, "cd" * 32, "image/webp", 96, 96, 70).to_record(),), True, 2)),
        (records.BLOBS, "ab" * 32, BlobRecord("ab" * 32, 10, 3)),
        (records.MEDIA_UNREFERENCED, (5, 9), None),
        (records.DEAD_BLOBS, "ef" * 32, None),
        (records.QUARANTINE, "ef" * 32, {"at": 1, "reason": "x"}),
        (records.MEDIA_USAGE, 1, 10),
        (records.MEDIA_REFS, (5, 9), MediaRef(3, [1, 2], 2)),
        (records.MEDIA_CONVERSATIONS, (9, 5), True),
        (records.HIDDEN, (5, 1, 3), None),
        (records.EXPIRIES, (99, 5, 3), None),
        (records.MEDIA_RELEASES, (5, 9), {"conversation": True, "senders": [1]}),
        (records.ABUSE, 1, AbuseRecord(1, (5, 6), 1, 2, 3, {7: 2}, 9, "score", "why", 4, "n")),
        (records.ABUSE_QUEUE, 1, None),
        (records.REPORTS, (0, 9), Report(9, 1, 7, 5, 1, "spam", "note", "evidence", 100,
                                         1000, "text/plain", "hi")),
        (records.REPORT_DEDUP, (1, 7, 5, 1), 9),
        (records.DIRECT_STATES, 5, DirectState(5, 1, "pending", [2])),
        (records.BLOCKS, (1, 2), 777),
        (records.INVITES, (5, 2), GroupInvite(5, 2, 1, 888)),
        (records.USER_INVITES, (2, 5), None),
        (records.ACCOUNT_STATE, 1, {"deactivated": True, "erasing": False}),
        (records.EXPORTS, "00a" + "ab" * 16, {"user_id": 1, "status": "ready"}),
        (records.REACTIONS, (5, 1, 2), ReactionRow("👍🏽", 4, 400, 86_400_400)),
        (records.REACTION_ENTRIES, (5, 1, 4), None),
        (records.EDITS, (5, 1, 6), None),
        (records.PINS, (5, 1), 7),
        (records.UNCOUNTED, (5, 4), 1),
        (records.EMAIL_SETTINGS, 1, {"address": "a@example.com", "enabled": True}),
        (records.EMAIL_DIGESTS, 1, {"due": 5, "mailed": [[5, 4]]}),
        (records.NOTIFY_MUTES, (1, 5), 10**15),
        (records.NOTIFY_PREFS, 1, {"previews": True}),
        (records.PUSH_SUBSCRIPTIONS, (1, 9), {"kind": "http", "device_id": 2,
                                              "url": "https://gw.example/notify",
                                              "pushkey": "k", "app_id": "a"}),
        (records.TO_DEVICE, (1, 2, 3), [7, 8, "chatd.olm", {"ciphertext": "c", "n": 1}]),
        (records.TO_DEVICE_HEADS, (1, 2), 3),
        (records.TO_DEVICE_TXNS, (7, 8, "txn-1"), [100, 2]),
        (records.ACCESS_KEYS, 1, b"k" * 16),
        (records.IDENTITY_KEYS, (1, 2), DeviceIdentity(1, 2, "c" * 43, "e" * 43, "s" * 86, 5)),
        (records.ONE_TIME_KEYS, (1, 2, "AAAAAAAAAAE"), SignedKey("AAAAAAAAAAE", "k" * 43,
                                                                 "s" * 86)),
        (records.FALLBACK_KEYS, (1, 2), FallbackKey("AAAAAAAAAAA", "f" * 43, "s" * 86, True)),
        (records.DEVICE_LISTS, 1, 3),
        (records.IDENTITY_OWNERS, "c:" + "c" * 43, (1, 2)),
    ]
    assert {family.name for family, _, _ in rows} == {f.name for f in records.FAMILIES}
    store = Store.open(str(tmp_path))
    batch = Batch()
    for family, key, value in rows:
        batch.put(family, key, value)
    store.write(batch)
    store.close()

    store = Store.open(str(tmp_path))
    try:
        for family, key, value in rows:
            assert store.get(family, key) == value, family.name
            assert store.scan(family, b"") == [(key, value)], family.name
        batch = Batch()
        batch.delete(records.USERS, 1)
        store.write(batch)
        assert store.get(records.USERS, 1) is None
    finally:
        store.close()


def test_scans_and_ranges_come_in_key_order_within_bounds(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path), sync=False)
    try:
        batch = Batch()
        for conv in (6, 4, 5):
            for seq in (3, 1, 2, 300, 256):
                batch.put(records.MESSAGES, (conv, seq), message(conv, seq))
        store.write(batch)
        in_five = [key for key, _ in store.scan(records.MESSAGES, u64(5))]
        assert in_five == [(5, 1), (5, 2), (5, 3), (5, 256), (5, 300)]
        assert [k for k, _ in store.scan(records.MESSAGES, u64(5), after=pair(5, 2),
                                         limit=2)] == [(5, 3), (5, 256)]

        def seqs(start: int, stop: int, limit: int, newest_first: bool) -> list[int]:
            return [key[1] for key, _ in store.range(
                records.MESSAGES, pair(5, start), pair(5, stop), limit=limit,
                newest_first=newest_first)]

        assert seqs(0, 1000, 10, False) == [1, 2, 3, 256, 300]
        assert seqs(0, 1000, 2, True) == [256, 300]
        assert seqs(2, 300, 10, True) == [2, 3, 256]  # the stop key itself is excluded
        assert seqs(4, 256, 10, False) == []
        assert seqs(301, 1000, 10, True) == []
    finally:
        store.close()


def test_a_record_written_before_a_field_existed_reads_with_its_default(
        tmp_path: Path) -> None:
    store = Store.open(str(tmp_path), sync=False)
    try:
        # A users row as written before `hide_last_seen` was added (five fields).
        old = records.pack(["bob", "Bob", b"h", 1, "status"])
        assert records.USERS.unpack(9, old) == User(9, "bob", "Bob", b"h", 1, "status", False)
    finally:
        store.close()


def test_a_value_that_cannot_be_packed_is_refused_and_the_packer_stays_usable() -> None:
    batch = Batch()
    with pytest.raises(UnstorableValue):
        batch.put(records.USERS, 1, User(1, "x", "\ud800", b"", 0))
    with pytest.raises(UnstorableValue):
        batch.put(records.CURSORS, (1, 2), 2**64)
    batch.put(records.USERS, 2, User(2, "y", "Y", b"", 0))
    assert len(batch.operations) == 1
    assert records.USERS.unpack(2, batch.operations[0][2] or b"") == User(2, "y", "Y", b"", 0)


def test_per_batch_bookkeeping_is_rolled_back_with_its_command(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path), sync=False)
    try:
        batch = Batch()
        assert batch.first_time("a")
        assert not batch.first_time("a")
        mark = batch.mark()
        assert batch.first_time("b")
        batch.before_write.append(lambda: batch.put(records.HANDLES, "refused", 1))
        batch.put(records.HANDLES, "also-refused", 2)
        batch.rollback_to(mark)
        assert batch.first_time("b")  # forgotten with the refused command
        assert not batch.first_time("a")
        batch.before_write.append(lambda: batch.put(records.HANDLES, "kept", 3))
        store.write(batch)
        assert store.get(records.HANDLES, "kept") == 3
        assert store.get(records.HANDLES, "refused") is None
        assert store.get(records.HANDLES, "also-refused") is None
    finally:
        store.close()


def test_an_expiring_message_round_trips(tmp_path: Path) -> None:
    expiring = Message(3000, 5, 3, 7, 8, "c3", "text/plain", "soon gone", 20, (), 86_400_020)
    store = Store.open(str(tmp_path))
    try:
        batch = Batch()
        batch.put(records.MESSAGES, (5, 3), expiring)
        store.write(batch)
        assert store.get(records.MESSAGES, (5, 3)) == expiring
    finally:
        store.close()


def test_replies_mentions_and_forwards_are_stored_only_when_used(tmp_path: Path) -> None:
    rich = Message(4000, 5, 4, 7, 8, "c4", "text/plain", "re", 30, reply_to=3,
                   mentions=(9, 10), forwarded=1,
                   quote={"sender_id": "7", "content_type": "text/plain", "text": "x"})
    store = Store.open(str(tmp_path))
    try:
        batch = Batch()
        batch.put(records.MESSAGES, (5, 4), rich)
        store.write(batch)
        back = store.get(records.MESSAGES, (5, 4))
        assert back is not None
        # The quote is made at each read, never stored (domain/replies.py).
        assert back.quote is None and replace(back, quote=rich.quote) == rich
        assert isinstance(back.mentions, tuple)
        assert len(records.unpack(records.MESSAGES.pack(rich))) == 12
        # A plain message, or one with only attachments, is stored as before.
        assert len(records.unpack(records.MESSAGES.pack(message(5, 1)))) == 7
        assert len(records.unpack(records.MESSAGES.pack(replace(
            rich, reply_to=0, mentions=(), forwarded=0, expires_at=99)))) == 9
    finally:
        store.close()


def test_purge_removes_deleted_values_from_every_file(tmp_path: Path) -> None:
    marker = b"purge-marker-5f1c2a"

    def files_holding() -> list[Path]:
        return [path for path in tmp_path.rglob("*")
                if path.is_file() and marker in path.read_bytes()]

    store = Store.open(str(tmp_path))
    try:
        batch = Batch()
        batch.put(records.MESSAGES, (5, 1), message(5, 1, marker))
        batch.put(records.MESSAGES, (6, 1), message(6, 1, b"neighbour"))
        store.write(batch)
        store.purge({})  # flushed into a table file: the scan sees inside those
        assert any(path.suffix == ".sst" for path in files_holding())
        assert not store.purge_wanted
        batch = Batch()
        batch.delete(records.MESSAGES, (5, 1))
        store.write(batch)
        assert store.purge_wanted
        store.purge(store.take_purge())
        assert files_holding() == []
        assert store.get(records.MESSAGES, (6, 1)) is not None
    finally:
        store.close()


def test_deletions_in_many_conversations_are_purged_as_one_span(tmp_path: Path) -> None:
    """Past a few conversations a family is compacted as one span, first to last: every
    deleted value in it leaves the disk, the records between them stay."""
    conversations = range(10, 10 + 3 * (store_module.SEPARATE_PURGE_RANGES + 3), 3)
    store = Store.open(str(tmp_path))
    try:
        batch = Batch()
        for conversation in conversations:
            batch.put(records.MESSAGES, (conversation, 1),
                      message(conversation, 1, f"gone-{conversation}-7d1e".encode()))
            batch.put(records.MESSAGES, (conversation + 1, 1),
                      message(conversation + 1, 1, b"stays"))
        store.write(batch)
        store.purge({})
        batch = Batch()
        for conversation in conversations:
            batch.delete(records.MESSAGES, (conversation, 1))
        store.write(batch)
        owed = store.take_purge()
        assert len(owed[records.MESSAGES.name] or ()) > store_module.SEPARATE_PURGE_RANGES
        store.purge(owed)
        held = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
        assert b"-7d1e" not in held
        assert all(store.get(records.MESSAGES, (conversation + 1, 1)) is not None
                   for conversation in conversations)
    finally:
        store.close()


def test_a_purge_owed_before_a_crash_is_owed_after_it(tmp_path: Path) -> None:
    """attack13: the ranges to purge were kept in memory only. A shard killed (or
    restarted) between a deletion and the next purge pass came back owing nothing, so a
    deleted message that had reached a table file stayed on disk for as long as RocksDB
    left that file alone: past the promised bound, indefinitely."""
    marker = b"crash-purge-marker-7d41"

    def files_holding() -> list[Path]:
        return [path for path in tmp_path.rglob("*")
                if path.is_file() and marker in path.read_bytes()]

    store = Store.open(str(tmp_path))
    try:
        batch = Batch()
        batch.put(records.MESSAGES, (5, 1), message(5, 1, marker))
        store.write(batch)
        store.purge({})  # in a table file
        batch = Batch()
        batch.delete(records.MESSAGES, (5, 1))
        store.write(batch)
        assert store.purge_wanted
    finally:
        store.close()  # no purge ran: as after kill -9 within storage.purge_interval
    store = Store.open(str(tmp_path))
    try:
        assert store.purge_wanted
        owed = store.take_purge()
        store.purge(owed)
        assert files_holding() == []
        store.purged(owed)
    finally:
        store.close()
    store = Store.open(str(tmp_path))
    try:
        assert not store.purge_wanted  # done: not owed again at every start
    finally:
        store.close()


def test_identity_records_from_before_the_sealed_key_read_back_without_one() -> None:
    """An `identity_keys` value written before the sealed-sender key (four fields) reads
    as an identity with no sealed key; a new one keeps both fields."""
    old = records.pack(["c" * 43, "e" * 43, "s" * 86, 5])
    assert records.IDENTITY_KEYS.unpack((1, 2), old) == DeviceIdentity(
        1, 2, "c" * 43, "e" * 43, "s" * 86, 5)
    new = DeviceIdentity(1, 2, "c" * 43, "e" * 43, "s" * 86, 5, "k" * 43, "t" * 86)
    assert records.IDENTITY_KEYS.unpack(
        (1, 2), records.IDENTITY_KEYS.pack(new)) == new
