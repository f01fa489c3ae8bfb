"""The rules of group membership, as pure functions over a `Conversation`.

Each `plan_*` function checks a requested change against the current state and returns
what would change, raising the client-facing error when the rule forbids it. Callers
apply the plan only after it returned, so a refused change leaves the state untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

from chatd.domain.models import Conversation
from chatd.errors import BadRequest, Conflict, Forbidden, NotFound


def unknown_conversation(conversation_id: int) -> NotFound:
    """The one answer for a conversation that does not exist and for one the caller is not
    in: a stranger must not learn which (whether two people have a direct chat, say)."""
    return NotFound(f"no conversation with id {conversation_id} that you are in",
                    code="unknown_conversation")


def require_member(conv: Conversation, user_id: int) -> None:
    """Checked before anything else about a conversation is looked at or revealed."""
    if not conv.is_member(user_id):
        raise unknown_conversation(conv.conversation_id)


def _require_group_admin(conv: Conversation, actor: int) -> None:
    require_member(conv, actor)
    if conv.kind != "group":
        raise BadRequest("this is a direct conversation, not a group", code="not_a_group")
    if not conv.is_admin(actor):
        raise Forbidden("only a group admin can do this", code="not_an_admin")


def plan_add(conv: Conversation, actor: int, user_ids: Iterable[int],
             max_members: int) -> list[int]:
    _require_group_admin(conv, actor)
    new = [uid for uid in dict.fromkeys(user_ids) if uid not in conv.members]
    if len(conv.members) + len(new) > max_members:
        raise Conflict(
            f"a group holds at most {max_members} members; it has {len(conv.members)}",
            code="group_full",
        )
    return new


def plan_remove(conv: Conversation, actor: int, user_ids: Iterable[int]) -> list[int]:
    _require_group_admin(conv, actor)
    targets = list(dict.fromkeys(user_ids))
    if actor in targets:
        raise BadRequest("to remove yourself, leave the group", code="use_leave")
    return [uid for uid in targets if uid in conv.members]


def plan_promote(conv: Conversation, actor: int, user_ids: Iterable[int]) -> list[int]:
    _require_group_admin(conv, actor)
    targets = list(dict.fromkeys(user_ids))
    strangers = [uid for uid in targets if uid not in conv.members]
    if strangers:
        raise BadRequest(f"user {strangers[0]} is not a member of this group", code="not_a_member")
    return [uid for uid in targets if not conv.is_admin(uid)]


def plan_rename(conv: Conversation, actor: int) -> None:
    _require_group_admin(conv, actor)


def plan_leave(conv: Conversation, actor: int) -> int | None:
    """Returns the member to promote when the last admin leaves a group that goes on."""
    require_member(conv, actor)
    if conv.kind != "group":
        raise BadRequest("you cannot leave a direct conversation", code="not_a_group")
    remaining = [uid for uid in conv.members if uid != actor]
    if not remaining or any(conv.is_admin(uid) for uid in remaining):
        return None
    # The longest-standing member: members keep insertion (join) order.
    return remaining[0]
