from __future__ import annotations

from functools import partial

import pytest
import trio

from chatd.domain.models import Session, Watermark
from chatd.errors import BadRequest, NotFound
from chatd.protocol import owner as ops
from chatd.storage import records
from tests.services.conftest import Shard


async def test_sends_get_dense_seqs_dedup_and_survive_a_restart(shard: Shard) -> None:
    alice, bob = await shard.user("alice"), await shard.user("bob")
    services = shard.services
    conv = (await services.conversations.open_direct(alice, bob.user_id)).conversation
    first = await services.messaging.send(alice, conversation_id=conv.conversation_id,
                                          client_msg_id="a1", content_type="text/plain",
                                          body="one")
    again = await services.messaging.send(alice, conversation_id=conv.conversation_id,
                                          client_msg_id="a1", content_type="text/plain",
                                          body="one, retried")
    assert again == first and first.seq == 1
    await services.messaging.send(bob, conversation_id=conv.conversation_id,
                                  client_msg_id="b1", content_type="text/plain", body="two")

    services = await shard.reopen()
    page = await services.messaging.history(bob, conv.conversation_id, after=None,
                                            before=None, limit=10)
    assert [(m.seq, m.body) for m in page.messages] == [(1, "one"), (2, "two")]
    # The dedup row answers a retry after the restart too.
    retried = await services.messaging.send(alice, conversation_id=conv.conversation_id,
                                            client_msg_id="a1", content_type="text/plain",
                                            body="one")
    assert retried == first
    reloaded = services.owner.get(conv.conversation_id)
    assert reloaded.head_seq == 2
    assert reloaded.watermark(alice.user_id) == Watermark(1, 1)
    assert reloaded.watermark(bob.user_id) == Watermark(2, 2)


async def test_watermarks_move_forward_only_and_refuse_bad_seqs(shard: Shard) -> None:
    alice, bob = await shard.user(), await shard.user()
    messaging = shard.services.messaging
    conv = (await shard.services.conversations.open_direct(alice, bob.user_id)).conversation
    # Contacts (docs/privacy.md): a request's recipient's receipts are not shown.
    await shard.services.privacy.answer_request(bob, conv.conversation_id, "accept")
    for n in range(3):
        await messaging.send(alice, conversation_id=conv.conversation_id,
                             client_msg_id=f"m{n}", content_type="text/plain", body="x")
    assert await messaging.mark_read(bob, conv.conversation_id, 2) == Watermark(2, 2)
    assert await messaging.mark_read(bob, conv.conversation_id, 1) == Watermark(2, 2)
    with pytest.raises(BadRequest) as past_head:
        await messaging.mark_read(bob, conv.conversation_id, 4)
    assert past_head.value.code == "seq_out_of_range"
    with pytest.raises(BadRequest):
        await messaging.mark_read(bob, conv.conversation_id, -1)
    status = await messaging.message_status(alice, conv.conversation_id, 2)
    assert sorted(status) == sorted([(alice.user_id, True, True), (bob.user_id, True, True)])
    assert (await messaging.message_status(alice, conv.conversation_id, 3))[1][1:] in (
        (False, False), (True, True))


async def test_strangers_see_the_same_404_as_for_nothing(shard: Shard) -> None:
    alice, bob, mallory = await shard.user(), await shard.user(), await shard.user()
    messaging = shard.services.messaging
    conv = (await shard.services.conversations.open_direct(alice, bob.user_id)).conversation
    answers = []
    for conversation_id in (conv.conversation_id, 424242):
        with pytest.raises(NotFound) as refused:
            await messaging.history(mallory, conversation_id, after=None, before=None,
                                    limit=5)
        answers.append((refused.value.code, refused.value.message.replace(
            str(conversation_id), "ID")))
    assert answers[0] == answers[1] == ("unknown_conversation", answers[0][1])


async def direct_with_messages(shard: Shard, count: int) -> tuple[Session, Session, int]:
    """Alice and Bob, and their direct conversation holding `count` messages from Alice."""
    alice, bob = await shard.user(), await shard.user()
    services = shard.services
    conv = (await services.conversations.open_direct(alice, bob.user_id)).conversation
    for n in range(count):
        await services.messaging.send(alice, conversation_id=conv.conversation_id,
                                      client_msg_id=f"m{n}", content_type="text/plain",
                                      body="x")
    return alice, bob, conv.conversation_id


async def test_an_ack_costs_no_command_and_rides_in_the_next_batch(shard: Shard) -> None:
    alice, bob, conversation_id = await direct_with_messages(shard, 3)
    services = shard.services
    conv = services.owner.get(conversation_id)
    before = services.committer.statistics()
    acked: dict[int, int] = {}
    services.messaging.acknowledge(bob, conv.conversation_id, 3, acked, True, True)
    services.messaging.acknowledge(bob, conv.conversation_id, 2, acked, True, True)  # no-op
    # Nothing queued, nothing written: the move is in memory at once.
    assert services.committer.statistics() == before
    assert services.owner.get(conv.conversation_id).watermark(bob.user_id) == Watermark(3, 0)
    assert services.store.get(records.CURSORS, (bob.device_id, conv.conversation_id)) is None
    # The next batch, whatever it is for, carries the cursor and the watermark.
    await services.messaging.send(alice, conversation_id=conv.conversation_id,
                                  client_msg_id="m3", content_type="text/plain", body="x")
    assert services.store.get(records.CURSORS, (bob.device_id, conv.conversation_id)) == 3
    assert services.store.get(records.WATERMARKS,
                              (conv.conversation_id, bob.user_id)) == Watermark(3, 0)
    with pytest.raises(BadRequest):
        services.messaging.check_ack(bob, conv.conversation_id, 99)


async def test_a_reconnect_before_the_hints_are_written_starts_after_the_ack(
        shard: Shard) -> None:
    _, bob, conversation_id = await direct_with_messages(shard, 3)
    shard.services.messaging.acknowledge(bob, conversation_id, 2, {}, True, True)
    assert shard.services.messaging.cursors_of(bob.device_id) == {conversation_id: 2}


async def test_with_no_batch_coming_the_hint_writer_carries_the_acks(shard: Shard) -> None:
    _, bob, conversation_id = await direct_with_messages(shard, 3)
    services = shard.services
    async with trio.open_nursery() as nursery:
        idle = services.committer.statistics()
        nursery.start_soon(partial(services.messaging.run_hint_writer, interval=0.05))
        await trio.sleep(0.2)
        assert services.committer.statistics() == idle  # no hint, no wake-up, no batch
        services.messaging.acknowledge(bob, conversation_id, 3, {}, True, True)
        with trio.fail_after(2):
            while services.store.get(  # noqa: ASYNC110  # polls the store the writer fills
                    records.CURSORS, (bob.device_id, conversation_id)) != 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert services.committer.statistics().batches_written == idle.batches_written + 1


async def test_answers_that_list_much_come_in_pages_that_fit_a_mesh_frame(
        shard: Shard) -> None:
    alice = await shard.user()
    others = [await shard.user() for _ in range(12)]
    services = shard.services
    services.owner_api.page_bytes = 1_000  # a few conversations, or messages, a page
    groups = {(await services.conversations.create_group(alice, f"g{n}", [
        other.user_id for other in others])).conversation_id for n in range(7)}
    starts = await services.messaging.delivery_starts(alice, {})
    assert {conv.conversation_id for conv, _ in starts} == groups  # every page was read
    conversation_id = min(groups)
    for n in range(6):
        await services.messaging.send(alice, conversation_id=conversation_id,
                                      client_msg_id=f"big{n}", content_type="text/plain",
                                      body=f"{n}" + "x" * 400)
    # A page asked across the mesh names a bound (a local one does not).
    newest = services.owner_api.history(ops.History(conversation_id, alice.user_id, -1, -1,
                                                    50, 1_000))
    assert [m.body[0] for m in newest.messages] == ["4", "5"]  # type: ignore[index]
    assert newest.has_more
    oldest = services.owner_api.history(ops.History(conversation_id, alice.user_id, 1, -1,
                                                    50, 1_000))
    assert [m.body[0] for m in oldest.messages] == ["0", "1"]  # type: ignore[index]
    assert oldest.has_more
    whole = await services.messaging.history(alice, conversation_id, after=1, before=None,
                                             limit=50)
    assert len(whole.messages) == 6 and not whole.has_more


async def test_a_typing_flood_is_stopped_before_it_reaches_the_owner(shard: Shard) -> None:
    alice, _, conversation_id = await direct_with_messages(shard, 0)
    services = shard.services
    reached: list[object] = []

    def owner(command: ops.OwnerCommand) -> object:  # the real OwnerApi, counted
        reached.append(command)
        return services.owner_api.run(command)

    services.router.attach(owner, None)
    relayed = [await services.messaging.typing(alice, conversation_id) for _ in range(10)]
    assert relayed == [True] * 3 + [False] * 7
    assert len(reached) == 3  # the rest never left the shard the client is on
