from __future__ import annotations

from pathlib import Path

from chatd.domain.models import Conversation, Device, Member, Message, TokenRecord, User, Watermark
from chatd.storage import Store


def message(conv: int, seq: int, body: str | bytes = "hi", client_msg_id: str = "") -> Message:
    return Message(seq * 1000, conv, seq, 7, 8, client_msg_id or f"c{seq}", "text/plain", body,
                   seq * 10)


def test_records_round_trip_and_survive_reopen(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path))
    batch = store.batch()
    batch.put_user(User(1, "alice", "Alice", b"hash", 100, "hi"))
    batch.put_handle("alice", 1)
    batch.put_device(Device(1, 2, "phone", 101, b"t" * 32))
    batch.put_token(b"t" * 32, TokenRecord(1, 2, 999))
    conv = Conversation(5, "group", "G", 1, 50)
    batch.put_conversation(conv)
    batch.put_member(5, 3, Member("member", 2))
    batch.put_member(5, 1, Member("admin", 1))
    batch.put_watermark(5, 1, Watermark(2, 1))
    batch.put_message(message(5, 1, b"\x00\xff"))
    batch.put_message(message(5, 2, client_msg_id="dup"))
    store.write(batch)
    store.close()

    store = Store.open(str(tmp_path))
    try:
        assert store.get_user(1) == User(1, "alice", "Alice", b"hash", 100, "hi")
        assert store.user_id_for_handle("alice") == 1
        assert store.list_devices(1) == [Device(1, 2, "phone", 101, b"t" * 32)]
        assert store.get_token(b"t" * 32) == TokenRecord(1, 2, 999)
        loaded = store.load_conversation(5)
        assert loaded is not None
        assert (loaded.head_seq, loaded.last_ts) == (2, 20)
        # Members come back in join order, not id order.
        assert list(loaded.members.items()) == [(1, Member("admin", 1)), (3, Member("member", 2))]
        assert loaded.watermarks == {1: Watermark(2, 1)}
        assert store.conversations_of(3) == [5]
        sent = store.get_sent(5, 7, "dup")
        assert sent is not None and sent.seq == 2
        assert store.read_messages(5, after=0, before=3, limit=10, newest_first=False)[0].body \
            == b"\x00\xff"
    finally:
        store.close()


def test_message_ranges_stay_inside_their_conversation(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path), sync=False)
    try:
        batch = store.batch()
        for conv in (4, 5, 6):
            batch.put_conversation(Conversation(conv, "direct", "", 1, 0))
            for seq in range(1, 6):
                batch.put_message(message(conv, seq))
        store.write(batch)

        def seqs(**kwargs: int | bool | None) -> list[int]:
            return [m.seq for m in store.read_messages(5, **kwargs)]  # type: ignore[arg-type]

        assert seqs(after=0, before=None, limit=10, newest_first=False) == [1, 2, 3, 4, 5]
        assert seqs(after=0, before=None, limit=2, newest_first=True) == [4, 5]
        assert seqs(after=1, before=4, limit=10, newest_first=True) == [2, 3]
        assert seqs(after=0, before=1, limit=10, newest_first=True) == []
        assert seqs(after=5, before=None, limit=10, newest_first=False) == []
        empty = store.load_conversation(4)
        assert empty is not None and empty.head_seq == 5
        assert store.load_conversation(99) is None
    finally:
        store.close()


def test_deleting_a_member_drops_their_index_and_watermark(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path), sync=False)
    try:
        batch = store.batch()
        batch.put_conversation(Conversation(5, "group", "G", 1, 0))
        batch.put_member(5, 1, Member("admin", 1))
        batch.put_watermark(5, 1, Watermark(1, 1))
        store.write(batch)
        batch = store.batch()
        batch.delete_member(5, 1)
        store.write(batch)
        loaded = store.load_conversation(5)
        assert loaded is not None and loaded.members == {} and loaded.watermarks == {}
        assert store.conversations_of(1) == []
    finally:
        store.close()


def test_per_batch_bookkeeping_is_rolled_back_with_its_command(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path), sync=False)
    try:
        batch = store.batch()
        assert batch.first_time("a")
        assert not batch.first_time("a")
        mark = batch.mark()
        assert batch.first_time("b")
        batch.before_write.append(lambda: batch.put_handle("refused", 1))
        batch.put_handle("also-refused", 2)
        batch.rollback_to(mark)
        assert batch.first_time("b")  # forgotten with the refused command
        assert not batch.first_time("a")
        batch.before_write.append(lambda: batch.put_handle("kept", 3))
        store.write(batch)
        assert store.user_id_for_handle("kept") == 3
        assert store.user_id_for_handle("refused") is None
        assert store.user_id_for_handle("also-refused") is None
    finally:
        store.close()
