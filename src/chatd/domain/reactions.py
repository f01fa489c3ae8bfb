"""Reactions, pure: what an emoji is, and a message's reactions summed up.

Each user has at most one reaction per message (WhatsApp's rule): a new one replaces the
old, and "" removes it. An emoji is one emoji as the `emoji` library's data (Unicode's
emoji-test list, maintained upstream) has it: a single grapheme cluster, with its skin
tone or zero-width-joiner sequence. Anything else is a 400 `invalid_emoji`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import emoji

from chatd.errors import BadRequest

#: Longer than any emoji sequence (the longest, a family with skin tones, is 11 code
#: points): anything longer is refused before the library looks at it.
MAX_EMOJI_LENGTH = 16


@dataclass(frozen=True, slots=True)
class ReactionRow:
    """A user's current reaction to one message (`records.REACTIONS`): the emoji, the seq
    of the entry that set it, when, and when that entry expires (0: never)."""

    emoji: str
    seq: int
    ts: int
    expires_at: int = 0


def check_emoji(raw: str, field: str = "emoji") -> str:
    """`raw` if it is exactly one emoji, else 400."""
    if not raw or len(raw) > MAX_EMOJI_LENGTH or not emoji.is_emoji(raw):
        raise BadRequest(f"{field}: must be exactly one emoji", code="invalid_emoji")
    return raw


def summarise(rows: Iterable[tuple[int, ReactionRow]], viewer_id: int, *, now_ms: int,
              retention_cutoff_ms: int, head_seq: int) -> dict[str, tuple[int, bool]]:
    """emoji -> (how many reacted with it, whether `viewer_id` did), from (user, row)
    pairs; rows whose entry expired, is past retention or not acknowledged yet count
    for nothing (the sweeper removes the first two)."""
    summary: dict[str, tuple[int, bool]] = {}
    for user_id, row in rows:
        if row.seq > head_seq or 0 < row.expires_at <= now_ms \
                or row.ts < retention_cutoff_ms:
            continue
        count, mine = summary.get(row.emoji, (0, False))
        summary[row.emoji] = (count + 1, mine or user_id == viewer_id)
    return summary
