from __future__ import annotations

from chatd.storage import records
from tests.services.conftest import Shard


async def test_membership_is_rebuilt_from_disk_in_join_order(shard: Shard) -> None:
    alice, bob, carol = await shard.user(), await shard.user(), await shard.user()
    conversations = shard.services.conversations
    group = await conversations.create_group(alice, "Team", [bob.user_id])
    await conversations.add_members(alice, group.conversation_id, [carol.user_id])
    await conversations.promote(alice, group.conversation_id, [carol.user_id])
    await conversations.remove_members(alice, group.conversation_id, [bob.user_id])

    services = await shard.reopen()
    conv = services.owner.get(group.conversation_id)
    assert list(conv.members) == [alice.user_id, carol.user_id]
    assert [m.role for m in conv.members.values()] == ["admin", "admin"]
    page = await services.messaging.history(alice, conv.conversation_id, after=0, before=None,
                                            limit=10)
    events = [m.body["event"] for m in page.messages]  # type: ignore[index]
    assert events == ["group_created", "members_added", "admins_added", "members_removed"]
    # A removed member's index row and watermark went with them.
    assert services.owner.conversation_ids_of(bob.user_id) == []
    assert services.store.get(records.WATERMARKS, (conv.conversation_id, bob.user_id)) is None
    assert services.owner.conversation_ids_of(carol.user_id) == [conv.conversation_id]
