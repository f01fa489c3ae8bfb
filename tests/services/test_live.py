"""`LiveSession` without a socket: what it queues, in what order, from where."""

from __future__ import annotations

import pytest

from chatd.domain.models import Session
from chatd.protocol import owner as ops
from chatd.protocol.frames import OutFrame
from chatd.services.context import Services
from chatd.services.live import LiveSession, SessionClosed, SessionEnd
from tests.services.conftest import Shard


async def open_session(services: Services, session: Session, **options: int) -> LiveSession:
    live = LiveSession(user_id=session.user_id, device_id=session.device_id,
                       max_queue=1024, on_ready=lambda _live: None, **options)
    services.hub.attach(live)
    cursors = services.messaging.cursors_of(session.device_id)
    live.start(await services.messaging.delivery_starts(session, cursors), cursors)
    return live


def take(services: Services, live: LiveSession, limit: int = 64) -> list[OutFrame]:
    """What the transport would write next: the queued frames, or else the result of the
    one catch-up read the session asks for (as web/sockets.py does, without a socket)."""
    frames = live.take_frames(limit=limit)
    if frames:
        return frames
    wanted = live.next_fetch()
    if wanted is None:
        return []
    conversation_id, after = wanted
    messages, head = services.owner_api.read_log(ops.ReadLog(
        conversation_id, live.user_id, after, live.fetch_batch, live.fetch_bytes))
    live.fetched(conversation_id, messages, head)
    return live.take_frames(limit=limit)


def seqs(frames: list[OutFrame]) -> list[int]:
    return [f.payload["message"]["seq"] for f in frames if f.payload["type"] == "message"]


_sent = iter(range(1_000_000))


async def send(services: Services, session: Session, conversation_id: int, body: str) -> None:
    await services.messaging.send(session, conversation_id=conversation_id,
                                  client_msg_id=f"c{next(_sent)}", content_type="text/plain",
                                  body=body)


async def test_catch_up_then_live_with_no_gap_and_no_duplicate(shard: Shard) -> None:
    alice, bob = await shard.user(), await shard.user()
    services = shard.services
    conv = (await services.conversations.open_direct(alice, bob.user_id)).conversation
    for n in range(5):
        await send(services, alice, conv.conversation_id, f"early{n}")
    live = await open_session(services, bob)
    await send(services, alice, conv.conversation_id, "live")  # arrives while behind
    taken: list[OutFrame] = []
    while batch := take(services, live, limit=2):
        taken += batch
    assert seqs(taken) == [1, 2, 3, 4, 5, 6]


async def test_catch_up_reads_a_bounded_amount_ahead(shard: Shard) -> None:
    alice, bob = await shard.user(), await shard.user()
    services = shard.services
    conv = (await services.conversations.open_direct(alice, bob.user_id)).conversation
    for n in range(10):
        await send(services, alice, conv.conversation_id, f"{n}" + "x" * 30_000)
    live = await open_session(services, bob, fetch_bytes=100_000)
    first = take(services, live)
    assert seqs(first) == [1, 2, 3, 4]  # stops once ~100 KB are queued
    rest: list[OutFrame] = []
    while batch := take(services, live):
        rest += batch
    assert seqs(rest) == [5, 6, 7, 8, 9, 10]


async def test_sync_rewinds_to_the_positions_given(shard: Shard) -> None:
    # (The web layer checks a sync whole before it reaches the session:
    # tests/web/test_ws_containment.py.)
    alice, bob = await shard.user(), await shard.user()
    services = shard.services
    conv = (await services.conversations.open_direct(alice, bob.user_id)).conversation
    for n in range(3):
        await send(services, alice, conv.conversation_id, f"m{n}")
    live = await open_session(services, bob)
    assert seqs(take(services, live)) == [1, 2, 3]
    assert take(services, live) == []
    live.sync([(conv.conversation_id, 2, 3)])
    assert seqs(take(services, live)) == [2, 3]


async def test_a_full_queue_closes_the_session_and_drops_further_frames(shard: Shard) -> None:
    bob = await shard.user()
    live = await open_session(shard.services, bob)
    take(shard.services, live)
    for n in range(1025):
        live.push(OutFrame({"type": "pong", "req": str(n)}))
    with pytest.raises(SessionClosed) as closed:
        live.take_frames()
    assert closed.value.end is SessionEnd.TOO_SLOW


async def test_a_member_added_or_re_added_is_never_sent_what_came_before(
        shard: Shard) -> None:
    alice, bob, mallory = await shard.user(), await shard.user(), await shard.user()
    services = shard.services
    group = (await services.conversations.create_group(alice, "g", [bob.user_id]))
    conversation_id = group.conversation_id
    await send(services, alice, conversation_id, "before mallory")  # seq 2
    # An ack for a conversation her session does not follow leaves no cursor anywhere...
    live = await open_session(services, mallory)
    services.messaging.acknowledge(mallory, conversation_id, 0, live.acked, True,
                                   live.follows(conversation_id))
    assert services.messaging.cursors_of(mallory.device_id) == {}
    # ...and a cursor from nowhere (here: handed to the session) opens nothing either.
    live.acked[conversation_id] = 0
    await services.conversations.add_members(alice, conversation_id, [mallory.user_id])
    got: list[OutFrame] = []
    while batch := take(services, live):
        got += batch
    assert seqs(got) == [3]  # members_added, nothing before it
    await services.conversations.remove_members(alice, conversation_id, [mallory.user_id])
    await send(services, alice, conversation_id, "while mallory was out")  # seq 5
    await services.conversations.add_members(alice, conversation_id, [mallory.user_id])
    got = []
    while batch := take(services, live):
        got += batch
    assert seqs(got) == [4, 6]  # her removal, then her return: not seq 5
