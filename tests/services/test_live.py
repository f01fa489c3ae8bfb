"""`LiveSession` without a socket: what it queues, in what order, from where."""

from __future__ import annotations

import pytest

from chatd.domain.models import Session
from chatd.errors import BadRequest, NotFound
from chatd.protocol.frames import OutFrame
from chatd.services.context import Services
from chatd.services.live import LiveSession, SessionClosed, SessionEnd
from tests.services.conftest import Shard


def open_session(services: Services, session: Session, **options: int) -> LiveSession:
    live = LiveSession(user_id=session.user_id, device_id=session.device_id,
                       log=services.log, owner=services.owner, max_queue=1024,
                       on_ready=lambda _live: None, **options)
    services.hub.attach(live)
    live.start(services.messaging.conversations_of(session),
               services.messaging.cursors_of(session))
    return live


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
    live = open_session(services, bob)
    await send(services, alice, conv.conversation_id, "live")  # arrives while behind
    taken: list[OutFrame] = []
    while batch := live.take_frames(limit=2):
        taken += batch
    assert seqs(taken) == [1, 2, 3, 4, 5, 6]


async def test_catch_up_reads_a_bounded_amount_ahead(shard: Shard) -> None:
    alice, bob = await shard.user(), await shard.user()
    services = shard.services
    conv = (await services.conversations.open_direct(alice, bob.user_id)).conversation
    for n in range(10):
        await send(services, alice, conv.conversation_id, f"{n}" + "x" * 30_000)
    live = open_session(services, bob, fetch_bytes=100_000)
    first = live.take_frames()
    assert seqs(first) == [1, 2, 3, 4]  # stops once ~100 KB are queued
    rest: list[OutFrame] = []
    while batch := live.take_frames():
        rest += batch
    assert seqs(rest) == [5, 6, 7, 8, 9, 10]


async def test_sync_is_checked_whole_before_it_moves_anything(shard: Shard) -> None:
    alice, bob, mallory = await shard.user(), await shard.user(), await shard.user()
    services = shard.services
    conv = (await services.conversations.open_direct(alice, bob.user_id)).conversation
    foreign = (await services.conversations.open_direct(alice, mallory.user_id)).conversation
    for n in range(3):
        await send(services, alice, conv.conversation_id, f"m{n}")
    live = open_session(services, bob)
    assert seqs(live.take_frames()) == [1, 2, 3]
    with pytest.raises(BadRequest):
        live.sync({conv.conversation_id: 0, 12345: 1} | {conv.conversation_id: 99})
    with pytest.raises(NotFound):
        live.sync({conv.conversation_id: 0, foreign.conversation_id: 0})
    assert live.take_frames() == []  # nothing was rewound by the refused syncs
    live.sync({conv.conversation_id: 1})
    assert seqs(live.take_frames()) == [2, 3]


async def test_a_full_queue_closes_the_session_and_drops_further_frames(shard: Shard) -> None:
    bob = await shard.user()
    live = open_session(shard.services, bob)
    live.take_frames()
    for n in range(1025):
        live.push(OutFrame({"type": "pong", "req": str(n)}))
    with pytest.raises(SessionClosed) as closed:
        live.take_frames()
    assert closed.value.end is SessionEnd.TOO_SLOW
