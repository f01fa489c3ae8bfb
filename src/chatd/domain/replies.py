"""Replies, mentions and forwarding (issue 18), as pure rules over messages.

All three are ordinary entries of the conversation's own log: a reply names the seq it
answers (`reply_to`), a message names the members it mentions (`mentions`), a forwarded
copy counts how far it is from its original (`forwarded`, the hop count). Seqs stay dense
and a server that cannot read a body (end-to-end encrypted) still orders them.

The **quote** a reply shows is made by the owner from the target entry *at read time*,
never stored: a target deleted (or expired) later is shown as deleted at once, and the
delete path has no copies of the target's text to chase (the marker scan after a delete
and a compaction finds none: tests/web/test_replies.py).
"""

from __future__ import annotations

import re
from typing import Any

from chatd.domain import deletion, rules
from chatd.domain.models import Conversation, Message
from chatd.errors import BadRequest, Conflict

#: The most characters of a text body a quote shows.
QUOTE_CHARS = 100
#: The most members one message mentions (explicit ids over it are refused; handles
#: past it in a text are not looked up).
MAX_MENTIONS = 50
#: The most conversations one forward copies into.
MAX_FORWARD_TARGETS = 5
#: From this many hops a copy is `forwarded_many` (as WhatsApp marks a message
#: "forwarded many times"), and such a message is forwarded to one conversation at a time.
FORWARDED_MANY_HOPS = 5

#: `@handle` in a text: a username (3 to 32 of a-z, 0-9, '_', '.', any case: usernames
#: compare case-insensitively) or an E.164 number. Not after a word character or an '@'
#: (so "mail@example.com" mentions nobody).
_MENTION = re.compile(r"(?<![\w@])@(\+[1-9][0-9]{6,14}|[A-Za-z0-9_.]{3,32})(?![A-Za-z0-9_])")


def mentioned_handles(body: str) -> list[str]:
    """The normalised handles a text body may mention, distinct, in order of appearance,
    at most `MAX_MENTIONS`. A '.' may end a username or the sentence ("thanks @bob."):
    both are candidates, and only handles that exist are mentioned."""
    if "@" not in body:
        return []
    found: dict[str, None] = {}
    for match in _MENTION.finditer(body):
        raw = match.group(1)
        for candidate in dict.fromkeys((raw.rstrip("."), raw)):
            try:
                found.setdefault(rules.normalize_handle(candidate))
            except BadRequest:
                continue
        if len(found) >= MAX_MENTIONS:
            break
    return list(found)[:MAX_MENTIONS]


def check_mention_ids(user_ids: list[int]) -> list[int]:
    """Explicit mentions a client sent: distinct, in order, at most `MAX_MENTIONS`."""
    distinct = list(dict.fromkeys(user_ids))
    if len(distinct) > MAX_MENTIONS:
        raise BadRequest(f"mentions: at most {MAX_MENTIONS} users", code="invalid_field")
    return distinct


def kept_mentions(conv: Conversation, sender_id: int, user_ids: list[int]) -> tuple[int, ...]:
    """The owner's rule: only members are mentioned (not the sender); others are dropped
    silently, since a handle in a text may be anybody's."""
    return tuple(user_id for user_id in list(dict.fromkeys(user_ids))[:MAX_MENTIONS]
                 if user_id != sender_id and conv.is_member(user_id))


def quote_of(target: Message) -> dict[str, Any]:
    """What a reply shows of its target (as a read shows the target now): its sender and
    content type, and the first `QUOTE_CHARS` characters of a text body. Nothing of an
    opaque (encrypted) body; a deleted or expired target is shown as deleted."""
    quote: dict[str, Any] = {"sender_id": str(target.sender_id),
                             "content_type": target.content_type}
    if deletion.is_deleted(target):
        quote["deleted"] = True
    elif isinstance(target.body, str) and rules.is_text_content(target.content_type):
        quote["text"] = target.body[:QUOTE_CHARS]
    return quote


def check_reply_to(reply_to: int) -> int:
    if reply_to < 0:
        raise BadRequest("reply_to: a seq (0 or absent: not a reply)", code="invalid_field")
    return reply_to


def forwardable(message: Message | None, seq: int) -> Message:
    """The source of a forward, as the caller reads it: a live message of a member's.
    Deleted and expired ones are gone (404, as unknown); the log's own entries, and
    reactions, edits and pins, are not messages anyone sent (409)."""
    if message is None or message.seq != seq or deletion.is_deleted(message):
        raise deletion.unknown_message(seq)
    if message.content_type in rules.RESERVED_CONTENT_TYPES or not isinstance(
            message.body, str | bytes):
        # (Membership entries, and reactions, edits and pins: entries about messages.)
        raise Conflict("only messages can be forwarded, not the entries the server "
                       "writes or those about messages (reactions, edits, pins)",
                       code="not_forwardable")
    return message


def check_forward_targets(source: Message, targets: list[int]) -> list[int]:
    """Distinct targets, 1 to `MAX_FORWARD_TARGETS`; one only for a message forwarded
    many times already (virality is slowed, not stopped)."""
    distinct = list(dict.fromkeys(targets))
    if not 1 <= len(distinct) <= MAX_FORWARD_TARGETS:
        raise BadRequest(f"to: 1 to {MAX_FORWARD_TARGETS} conversations",
                         code="invalid_field")
    if is_forwarded_many(source.forwarded) and len(distinct) > 1:
        raise BadRequest("this message was forwarded many times: forward it to one "
                         "conversation at a time", code="forward_limited")
    return distinct


def is_forwarded_many(hops: int) -> bool:
    return hops >= FORWARDED_MANY_HOPS
