"""Pinned messages, pure: who may pin, and how many.

A group's admins pin and unpin; in a direct conversation either member does. At most
`MAX_PINS` messages are pinned at once (409 `too_many_pins`); only live messages can be
pinned (409 `not_pinnable`); unpinning a message that is not pinned changes nothing.
"""

from __future__ import annotations

from chatd.domain import groups, privacy, targets
from chatd.domain.models import Conversation, Message
from chatd.errors import Conflict, Forbidden

MAX_PINS = 3


def plan_pin(conv: Conversation, actor_id: int, message: Message, pinned: bool, *,
             now_ms: int, retention_cutoff_ms: int) -> bool:
    """Whether the pin changes (False: already so)."""
    groups.require_member(conv, actor_id)
    if conv.kind == "direct":
        # A pin is an entry in the other's chat: refused as a message would be (a block,
        # a declined request), or it would be a way to keep writing.
        privacy.check_send(conv.direct, actor_id)
    if conv.kind == "group" and not conv.is_admin(actor_id):
        raise Forbidden("only a group admin can pin or unpin messages", code="not_an_admin")
    if not pinned:
        return message.seq in conv.pins
    if message.seq in conv.pins:
        return False
    targets.require_message(message, now_ms=now_ms,
                                retention_cutoff_ms=retention_cutoff_ms, what="pinned",
                                code="not_pinnable")
    if len(conv.pins) >= MAX_PINS:
        raise Conflict(f"at most {MAX_PINS} messages can be pinned; unpin one first",
                       code="too_many_pins")
    return True
