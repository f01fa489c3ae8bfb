"""limits.max_groups_per_user: checked by the owner on create and add, kept in step by
joins and leaves, read back from the membership index after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from chatd.errors import Conflict
from tests.services.conftest import Shard


@pytest.fixture
async def shard(nursery: trio.Nursery, tmp_path: Path) -> Shard:
    running = Shard(tmp_path / "data", nursery,
                    sections={"limits": {"max_groups_per_user": 2}})
    await running.start()
    return running


async def test_create_and_add_stop_at_the_cap(shard: Shard) -> None:
    alice, bob, carol, dave = [await shard.user() for _ in range(4)]
    conversations = shard.services.conversations
    # Direct conversations are not groups: they do not count.
    for other in (bob, carol, dave):
        await conversations.open_direct(alice, other.user_id)
    first = await conversations.create_group(alice, "one", [bob.user_id])
    await conversations.create_group(alice, "two", [bob.user_id])

    with pytest.raises(Conflict) as caught:
        await conversations.create_group(alice, "three", [])
    assert caught.value.code == "too_many_groups"
    assert "you are in 2 groups" in caught.value.message

    # Someone else at the cap: named, but how many groups they are in is not said.
    with pytest.raises(Conflict) as caught:
        await conversations.create_group(carol, "carol's", [dave.user_id, bob.user_id])
    assert caught.value.code == "too_many_groups"
    assert str(bob.user_id) in caught.value.message and "2" not in caught.value.message.replace(
        str(bob.user_id), "")
    group = await conversations.create_group(carol, "carol's", [dave.user_id])
    with pytest.raises(Conflict, match="as many groups"):
        await conversations.add_members(carol, group.conversation_id,
                                        [dave.user_id, bob.user_id])
    # Refused whole: dave was already in, bob was not added.
    conv = shard.services.owner.get(group.conversation_id)
    assert bob.user_id not in conv.members

    # Leaving one makes room.
    await conversations.leave(bob, first.conversation_id)
    conv = await conversations.add_members(carol, group.conversation_id, [bob.user_id])
    assert bob.user_id in conv.members
    # ... and being removed does too.
    await conversations.remove_members(carol, group.conversation_id, [bob.user_id])
    await conversations.add_members(carol, group.conversation_id, [bob.user_id])


async def test_counts_are_read_back_from_the_index_after_a_restart(shard: Shard) -> None:
    alice, bob = await shard.user(), await shard.user()
    conversations = shard.services.conversations
    kept = await conversations.create_group(alice, "one", [bob.user_id])
    left = await conversations.create_group(bob, "two", [alice.user_id])
    await conversations.leave(alice, left.conversation_id)
    await conversations.create_group(alice, "three", [])

    services = await shard.reopen()
    assert services.owner.groups.of(alice.user_id) == 2
    with pytest.raises(Conflict, match="you are in 2 groups"):
        await services.conversations.create_group(alice, "four", [])
    await services.conversations.leave(alice, kept.conversation_id)
    await services.conversations.create_group(alice, "four", [])
