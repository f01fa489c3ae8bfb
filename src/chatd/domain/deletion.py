"""Deletion, disappearing messages and retention, as pure rules over messages.

A deleted entry keeps its place in the log: a **tombstone** at the same seq, with the
same message id, sender and time, the reserved content type `chatd/deleted`, no body and
no attachments, so seqs stay dense and a device that synced the original can tell what
went. An expired disappearing message, and one older than the server's retention, reads
as its tombstone from the moment it is due, before the sweeper writes it.
"""

from __future__ import annotations

from dataclasses import replace

from chatd.domain import groups
from chatd.domain import privacy as privacy_rules
from chatd.domain.models import Conversation, Message
from chatd.domain.rules import DELETED_CONTENT_TYPE, SYSTEM_CONTENT_TYPE
from chatd.errors import BadRequest, Conflict, Forbidden, NotFound

#: The disappearing-message timers a conversation may have (seconds): off, a day, a
#: week, 90 days.
TIMERS = (0, 86_400, 604_800, 7_776_000)

DAY_MS = 86_400_000


def tombstone_of(message: Message) -> Message:
    """What a deleted entry becomes: no body, no attachments, nothing expiring, and
    nothing of what it replied to, mentioned or was forwarded from."""
    return replace(message, content_type=DELETED_CONTENT_TYPE, body="", attachments=(),
                   expires_at=0, reply_to=0, mentions=(), forwarded=0, quote=None)


def is_deleted(message: Message) -> bool:
    return message.content_type == DELETED_CONTENT_TYPE


def is_due(message: Message, now_ms: int, retention_cutoff_ms: int) -> bool:
    """Whether a live entry must be shown as its tombstone now: it expired, or it is
    older than the retention (0: none). The log's own system entries never expire."""
    if message.content_type in (SYSTEM_CONTENT_TYPE, DELETED_CONTENT_TYPE):
        return False
    return (0 < message.expires_at <= now_ms) or message.ts < retention_cutoff_ms


def as_read(message: Message, now_ms: int, retention_cutoff_ms: int) -> Message:
    """The entry as any read shows it now."""
    return tombstone_of(message) if is_due(message, now_ms, retention_cutoff_ms) else message


def retention_cutoff(retention_days: float, now_ms: int) -> int:
    """Entries sent before this (ms) are past the retention; 0 when it is off."""
    return max(0, now_ms - int(retention_days * DAY_MS)) if retention_days > 0 else 0


def unknown_message(seq: int) -> NotFound:
    return NotFound(f"no message with seq {seq} in this conversation that you can read",
                    code="unknown_message")


def readable_entry(conv: Conversation, user_id: int, seq: int,
                   message: Message | None) -> Message:
    """The entry at `seq` if `user_id` can read it (404 alike otherwise: before they
    joined, not acknowledged yet, or never written)."""
    groups.require_member(conv, user_id)
    if message is None or not max(1, conv.members[user_id].joined_seq) <= seq <= conv.head_seq:
        raise unknown_message(seq)
    return message


def plan_delete_for_everyone(conv: Conversation, actor: int, message: Message, *,
                             now_ms: int, window_s: int, retention_cutoff_ms: int) -> bool:
    """Whether the entry is to be deleted now (False: it is gone already, nothing to do).
    Group admins may delete any message at any time; its sender within `window_s` of
    sending it; nobody else (403). The log's own entries cannot be deleted (409)."""
    if message.content_type == SYSTEM_CONTENT_TYPE:
        raise Conflict("entries the server writes (membership, names, timers) cannot be "
                       "deleted", code="not_deletable")
    if is_deleted(message) or is_due(message, now_ms, retention_cutoff_ms):
        return False
    if conv.kind == "group" and conv.is_admin(actor):
        return True
    if message.sender_id != actor:
        raise Forbidden("only its sender (or a group admin) may delete a message for "
                        "everyone", code="not_sender")
    if now_ms - message.ts > window_s * 1000:
        raise Forbidden(f"a message can be deleted for everyone within {window_s} s of "
                        "sending it (limits.delete_window_s); delete it for yourself "
                        "instead", code="delete_window_passed")
    return True


def plan_set_timer(conv: Conversation, actor: int, disappearing_s: int | None,
                   anyone_sets_timer: bool | None) -> None:
    """Who may change what: in a direct conversation either member sets the timer; in a
    group its admins, or every member when the group allows it; only admins change
    that permission, which only groups have."""
    groups.require_member(conv, actor)
    if disappearing_s is not None and disappearing_s not in TIMERS:
        raise BadRequest(f"disappearing_s: one of {', '.join(map(str, TIMERS))}",
                         code="invalid_field")
    if conv.kind != "group":
        if anyone_sets_timer is not None:
            raise BadRequest("anyone_sets_timer: only groups have it (either member of a "
                             "direct conversation sets its timer)", code="not_a_group")
        # A change is an entry in the other's chat: refused as a message would be
        # (a block, a declined request), or it would be a way to keep writing.
        privacy_rules.check_send(conv.direct, actor)
        return
    if anyone_sets_timer is not None and not conv.is_admin(actor):
        raise Forbidden("only a group admin can do this", code="not_an_admin")
    if disappearing_s is not None and not conv.is_admin(actor) and not conv.anyone_sets_timer:
        raise Forbidden("only a group admin may set this group's timer (an admin can let "
                        "everyone: anyone_sets_timer)", code="not_an_admin")
