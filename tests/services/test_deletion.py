"""Erasing a member, expiry and retention on a real shard's services (store, committer,
owner), with a clock the test moves. The REST and WebSocket sides are in
tests/web/test_deletion.py; the cross-shard forms in tests/cluster/test_deletion.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from chatd.domain.models import Message, Session
from chatd.domain.rules import DELETED_CONTENT_TYPE
from chatd.errors import NotFound
from chatd.protocol import owner as ops
from chatd.services import deletion as deletion_service
from chatd.services.context import build_services
from chatd.storage import Store, records
from tests.helpers import ManualClock, make_config
from tests.services.conftest import Shard


def log_of(shard: Shard, conversation_id: int) -> list[Message]:
    return shard.services.log.read(conversation_id, after=0, before=None, limit=10_000,
                                   newest_first=False)


def stored_bodies(shard: Shard) -> list[bytes]:
    """Every message record's raw bytes, as the store holds them."""
    return [value for _, value in shard.services.store.scan_raw("messages", limit=100_000)]


async def send(shard: Shard, session: Session, conversation_id: int, text: str,
               client_msg_id: str) -> int:
    result = await shard.services.messaging.send(
        session, conversation_id=conversation_id, client_msg_id=client_msg_id,
        content_type="text/plain", body=text)
    return result.seq


async def test_erase_member_tombstones_what_they_sent_and_removes_them(shard: Shard) -> None:
    alice, bob, carol = await shard.user(), await shard.user(), await shard.user()
    group = await shard.services.conversations.create_group(
        alice, "Team", [bob.user_id, carol.user_id])
    conversation_id = group.conversation_id
    for number in range(3):
        await send(shard, bob, conversation_id, f"bob-secret-{number}", f"b{number}")
    kept = await send(shard, alice, conversation_id, "alice stays", "a1")
    assert any(b"bob-secret" in raw for raw in stored_bodies(shard))

    router = shard.services.router
    assert await router.ask(ops.EraseMember(conversation_id, bob.user_id)) is None

    entries = log_of(shard, conversation_id)
    assert [entry.seq for entry in entries] == list(range(1, len(entries) + 1))  # dense
    bobs = [entry for entry in entries if entry.sender_id == bob.user_id
            and entry.content_type != "chatd/system"]
    assert len(bobs) == 3
    assert all(entry.content_type == DELETED_CONTENT_TYPE and entry.body == ""
               for entry in bobs)
    assert next(e for e in entries if e.seq == kept).body == "alice stays"
    assert entries[-1].body["event"] == "member_erased"  # type: ignore[index]
    assert entries[-1].body["user_id"] == str(bob.user_id)  # type: ignore[index]
    assert not any(b"bob-secret" in raw for raw in stored_bodies(shard))
    conv = shard.services.owner.get(conversation_id)
    assert bob.user_id not in conv.members
    assert shard.services.owner.conversation_ids_of(bob.user_id) == []
    assert shard.services.store.scan(
        records.DEDUP, records.pair(conversation_id, bob.user_id)) == []
    # The others read the tombstones; bob reads nothing (404, as any non-member).
    page = await shard.services.messaging.history(carol, conversation_id, after=0,
                                                  before=None, limit=50)
    assert [m.content_type for m in page.messages].count(DELETED_CONTENT_TYPE) == 3
    with pytest.raises(NotFound):
        await shard.services.messaging.history(bob, conversation_id, after=0, before=None,
                                               limit=50)

    # Idempotent: a second erase finds nothing to do and writes nothing.
    head = conv.head_seq
    assert await router.ask(ops.EraseMember(conversation_id, bob.user_id)) is None
    assert shard.services.owner.get(conversation_id).head_seq == head


async def test_a_long_log_is_erased_in_several_batches(
        shard: Shard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deletion_service, "ERASE_SCAN", 4)
    alice, bob = await shard.user(), await shard.user()
    direct = await shard.services.conversations.open_direct(alice, bob.user_id)
    conversation_id = direct.conversation.conversation_id
    for number in range(10):
        await send(shard, bob if number % 2 else alice, conversation_id,
                   f"text {number}", f"m{number}")
    before = shard.services.committer.statistics().batches_written
    await shard.services.router.ask(ops.EraseMember(conversation_id, bob.user_id))
    # 10 entries, 4 looked at per step: three steps, three batches.
    assert shard.services.committer.statistics().batches_written - before == 3
    entries = log_of(shard, conversation_id)
    assert [e.content_type for e in entries[:10]] == ["text/plain", DELETED_CONTENT_TYPE] * 5
    assert entries[10].body["event"] == "member_erased"  # type: ignore[index]
    # In a direct conversation the other party keeps it, with the tombstones.
    conv = shard.services.owner.get(conversation_id)
    assert list(conv.members) == [alice.user_id]
    page = await shard.services.messaging.history(alice, conversation_id, after=0,
                                                  before=None, limit=50)
    assert len(page.messages) == 11


async def test_erasing_sees_a_send_of_the_same_batch(shard: Shard) -> None:
    """A send queued just before the erase, in the same batch, is not on disk when the
    erase reads the log: it must be tombstoned all the same."""
    alice, bob = await shard.user(), await shard.user()
    group = await shard.services.conversations.create_group(alice, "G", [bob.user_id])
    conversation_id = group.conversation_id
    sent = shard.services.messaging.start_send(
        bob, conversation_id=conversation_id, client_msg_id="late",
        content_type="text/plain", body="sent-just-before")
    erased = shard.services.router.submit(ops.EraseMember(conversation_id, bob.user_id))
    await sent.wait()
    await erased.wait()
    assert not any(b"sent-just-before" in raw for raw in stored_bodies(shard))


@pytest.fixture
async def clocked(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[
        tuple[Shard, ManualClock]]:
    """A shard whose services read a clock the test moves, with a year's retention."""
    clock = ManualClock()
    running = Shard(tmp_path / "data", nursery)
    config = make_config(running.data_dir, limits={"retention_days": 365.0})
    running.services = build_services(config, Store.open(config.storage.data_dir, sync=False),
                                       clock=clock)
    await nursery.start(running.services.committer.run)
    yield running, clock
    await running.stop()


async def test_expiry_hides_at_once_and_the_sweep_writes_tombstones(
        clocked: tuple[Shard, ManualClock]) -> None:
    shard, clock = clocked
    alice, bob = await shard.user(), await shard.user()
    direct = await shard.services.conversations.open_direct(alice, bob.user_id)
    conversation_id = direct.conversation.conversation_id
    before = await send(shard, alice, conversation_id, "before-the-timer", "m0")
    conv = await shard.services.router.ask(
        ops.SetDisappearing(conversation_id, bob.user_id, 86_400, -1))
    assert conv.disappearing_s == 86_400
    sent_at = clock.now
    fleeting = await send(shard, alice, conversation_id, "fleeting-words", "m1")
    entry = shard.services.log.entry(conversation_id, fleeting)
    assert entry is not None and entry.expires_at == sent_at + 86_400_000

    async def read() -> dict[int, Message]:
        page = await shard.services.messaging.history(bob, conversation_id, after=0,
                                                      before=None, limit=50)
        return {message.seq: message for message in page.messages}

    assert (await read())[fleeting].body == "fleeting-words"
    clock.now = sent_at + 86_400_000  # due now: hidden at once, before any sweep
    shown = await read()
    assert shown[fleeting].content_type == DELETED_CONTENT_TYPE
    assert shown[before].body == "before-the-timer"
    assert any(b"fleeting-words" in raw for raw in stored_bodies(shard))

    report = await shard.services.sweeper.sweep()
    assert report.expired == 1
    assert not any(b"fleeting-words" in raw for raw in stored_bodies(shard))
    assert shard.services.store.scan(records.EXPIRIES, b"") == []
    # Catch-up (read_log) shows the tombstone too; a second sweep finds nothing.
    rows, _ = shard.services.owner_api.read_log(
        ops.ReadLog(conversation_id, bob.user_id, 0, 100, 1 << 20))
    assert [m.content_type for m in rows if m.seq == fleeting] == [DELETED_CONTENT_TYPE]
    assert (await shard.services.sweeper.sweep()).expired == 0


async def test_retention_tombstones_what_is_older_than_it(
        clocked: tuple[Shard, ManualClock]) -> None:
    shard, clock = clocked
    alice, bob = await shard.user(), await shard.user()
    direct = await shard.services.conversations.open_direct(alice, bob.user_id)
    conversation_id = direct.conversation.conversation_id
    old = await send(shard, alice, conversation_id, "ancient-history", "m0")
    clock.now += 200 * 86_400_000
    young = await send(shard, bob, conversation_id, "recent-news", "m1")
    clock.now += 200 * 86_400_000  # the first is 400 days old, the second 200
    page = await shard.services.messaging.history(bob, conversation_id, after=0,
                                                  before=None, limit=50)
    shown = {message.seq: message for message in page.messages}
    assert shown[old].content_type == DELETED_CONTENT_TYPE
    assert shown[young].body == "recent-news"
    await shard.services.sweeper.sweep()
    raws = stored_bodies(shard)
    assert not any(b"ancient-history" in raw for raw in raws)
    assert any(b"recent-news" in raw for raw in raws)
    await trio.testing.wait_all_tasks_blocked()


async def test_the_timer_and_hidden_rows_survive_a_restart(shard: Shard) -> None:
    alice, bob = await shard.user(), await shard.user()
    group = await shard.services.conversations.create_group(alice, "G", [bob.user_id])
    conversation_id = group.conversation_id
    await shard.services.conversations.set_disappearing(alice, conversation_id, 604_800, True)
    seq = await send(shard, bob, conversation_id, "hide me", "h1")
    await shard.services.messaging.delete_message(alice, conversation_id, seq,
                                                  for_everyone=False)
    services = await shard.reopen()
    conv = services.owner.get(conversation_id)
    assert (conv.disappearing_s, conv.anyone_sets_timer) == (604_800, True)
    page = await services.messaging.history(alice, conversation_id, after=0, before=None,
                                            limit=50)
    assert seq not in {message.seq for message in page.messages}
    later = await send(shard, bob, conversation_id, "later", "h2")
    entry = services.log.entry(conversation_id, later)
    assert entry is not None and entry.expires_at == entry.ts + 604_800_000
