"""The owner's conversation cache is bounded in bytes as well as in conversations."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from chatd.domain.models import Session
from chatd.services.owner import estimated_bytes
from tests.services.conftest import Shard

CACHE_BYTES = 40_000


@pytest.fixture
async def shard(nursery: trio.Nursery, tmp_path: Path) -> Shard:
    running = Shard(tmp_path / "data", nursery, sections={
        "storage": {"conversation_cache": 1000, "conversation_cache_bytes": CACHE_BYTES}})
    await running.start()
    return running


async def send(shard: Shard, session: Session, conversation_id: int, text: str) -> int:
    result = await shard.services.messaging.send(
        session, conversation_id=conversation_id, client_msg_id=text.replace(" ", "-"),
        content_type="text/plain", body=text)
    return result.seq


async def test_big_conversations_are_evicted_by_bytes_and_reload_intact(shard: Shard) -> None:
    alice = await shard.user()
    members = [await shard.user() for _ in range(20)]
    owner = shard.services.owner
    groups = []
    for n in range(12):
        group = await shard.services.conversations.create_group(
            alice, f"g{n}", [m.user_id for m in members])
        groups.append(group.conversation_id)
        await send(shard, alice, group.conversation_id, f"hello {n}")
    each = estimated_bytes(owner.get(groups[-1]))
    # All of them would not fit; the count bound (1,000) is nowhere near.
    assert each * len(groups) > CACHE_BYTES
    assert owner.cached_bytes <= CACHE_BYTES
    assert owner.cached <= CACHE_BYTES // each + 1
    assert owner.cached < len(groups)
    # The evicted come back from disk as they were: the next seq follows on.
    assert await send(shard, alice, groups[0], "again") == 3
    assert len(owner.get(groups[0]).members) == 21


async def test_growth_is_counted_when_its_batch_lands(shard: Shard) -> None:
    alice = await shard.user()
    owner = shard.services.owner
    group = await shard.services.conversations.create_group(alice, "small", [])
    before = owner.cached_bytes
    others = [await shard.user() for _ in range(10)]
    await shard.services.conversations.add_members(alice, group.conversation_id,
                                                   [o.user_id for o in others])
    assert owner.cached_bytes >= before + 10 * 150
    assert owner.cached_bytes == sum(estimated_bytes(owner.get(c)) for c in
                                     [group.conversation_id])


async def test_one_conversation_larger_than_the_bound_is_still_served(shard: Shard) -> None:
    alice = await shard.user()
    members = [await shard.user() for _ in range(300)]  # ~45 KB of members alone
    owner = shard.services.owner
    group = await shard.services.conversations.create_group(
        alice, "huge", [m.user_id for m in members])
    assert owner.cached == 1 and owner.cached_bytes > CACHE_BYTES
    assert await send(shard, alice, group.conversation_id, "hi") == 2
