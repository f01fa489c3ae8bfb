"""Reactions, edits and pins: log entries that point at another entry (their `target`).

Each is an entry of the conversation's own log (content types `chatd/reaction`,
`chatd/edit`, `chatd/pin`), so seqs stay dense and catch-up delivers them in order. What
reads show of them together (a message's reactions, its latest body) is an `Annotation`,
built by the owner from per-target records (services/reactions.py, services/edits.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chatd.domain import deletion
from chatd.domain.models import Message
from chatd.domain.rules import ANNOTATION_CONTENT_TYPES, SYSTEM_CONTENT_TYPE
from chatd.errors import Conflict


@dataclass(frozen=True, slots=True)
class Annotation:
    """What reads add to one message: emoji -> (count, whether the reader reacted), and
    the latest body with when it was edited (0: never edited)."""

    reactions: dict[str, tuple[int, bool]] = field(default_factory=dict)
    body: str | bytes | None = None
    edited_at: int = 0


def is_message(message: Message) -> bool:
    """Whether an entry is a message someone sent (not the server's, not deleted, not a
    reaction, edit or pin)."""
    return message.content_type != SYSTEM_CONTENT_TYPE \
        and message.content_type not in ANNOTATION_CONTENT_TYPES \
        and not deletion.is_deleted(message)


def require_message(message: Message, *, now_ms: int, retention_cutoff_ms: int,
                    what: str, code: str) -> None:
    """A reaction, edit or pin targets a live message: not an entry the server wrote, not
    another reaction, edit or pin, not deleted or expired (409 `code`)."""
    if not is_message(message) or deletion.is_due(message, now_ms, retention_cutoff_ms):
        raise Conflict(f"only a message that is still there can be {what} (not a deleted "
                       "one, or an entry the server wrote)", code=code)


def target_of(message: Message) -> int | None:
    """The seq a reaction, edit or pin entry points at (None for any other entry)."""
    body = message.body
    if message.content_type in ANNOTATION_CONTENT_TYPES and isinstance(body, dict):
        target = body.get("target")
        if isinstance(target, int):
            return target
    return None
