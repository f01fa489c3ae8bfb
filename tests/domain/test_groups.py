from __future__ import annotations

import pytest

from chatd.domain import groups
from chatd.domain.models import Conversation, Member
from chatd.errors import BadRequest, Conflict, Forbidden, NotFound


def group(*members: tuple[int, str]) -> Conversation:
    conv = Conversation(1, "group", "g", members[0][0], 0)
    for seq, (user_id, role) in enumerate(members, start=1):
        conv.members[user_id] = Member(role, seq)  # type: ignore[arg-type]
    return conv


def test_add_skips_existing_members_and_checks_the_limit() -> None:
    conv = group((1, "admin"), (2, "member"))
    assert groups.plan_add(conv, 1, [2, 3, 3, 4], max_members=4) == [3, 4]
    with pytest.raises(Conflict):
        groups.plan_add(conv, 1, [3, 4, 5], max_members=4)
    with pytest.raises(Forbidden):
        groups.plan_add(conv, 2, [3], max_members=10)
    with pytest.raises(NotFound, match="no conversation"):
        groups.plan_add(conv, 9, [3], max_members=10)


def test_a_non_member_learns_nothing_about_the_conversation() -> None:
    """The same 404 as for an id that does not exist, before any other rule is looked at
    (which would tell a stranger the conversation's kind or that it exists)."""
    direct = Conversation(7, "direct", "", 1, 0, members={1: Member("member", 0)})
    plans = (lambda conv: groups.plan_add(conv, 9, [2], 10),
             lambda conv: groups.plan_remove(conv, 9, [1]),
             lambda conv: groups.plan_promote(conv, 9, [1]),
             lambda conv: groups.plan_rename(conv, 9),
             lambda conv: groups.plan_leave(conv, 9))
    for conv in (direct, group((1, "admin"))):
        for plan in plans:
            with pytest.raises(NotFound) as refused:
                plan(conv)
            assert refused.value.code == "unknown_conversation"
            assert str(refused.value) == str(groups.unknown_conversation(conv.conversation_id))


def test_direct_conversations_have_no_admin_operations() -> None:
    conv = Conversation(1, "direct", "", 1, 0, members={1: Member("member", 0)})
    for plan in (lambda: groups.plan_add(conv, 1, [2], 10), lambda: groups.plan_rename(conv, 1),
                 lambda: groups.plan_leave(conv, 1)):
        with pytest.raises(BadRequest):
            plan()


def test_leave_promotes_the_longest_standing_member_when_no_admin_is_left() -> None:
    assert groups.plan_leave(group((1, "admin"), (2, "member"), (3, "member")), 1) == 2
    assert groups.plan_leave(group((1, "admin"), (2, "admin"), (3, "member")), 1) is None
    assert groups.plan_leave(group((1, "admin"),), 1) is None
    assert groups.plan_leave(group((1, "admin"), (2, "member")), 2) is None


def test_remove_and_promote() -> None:
    conv = group((1, "admin"), (2, "member"), (3, "admin"))
    assert groups.plan_remove(conv, 1, [2, 9]) == [2]
    with pytest.raises(BadRequest):
        groups.plan_remove(conv, 1, [1])
    assert groups.plan_promote(conv, 1, [2, 3]) == [2]
    with pytest.raises(BadRequest):
        groups.plan_promote(conv, 1, [9])
