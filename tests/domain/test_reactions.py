"""What counts as one emoji, and a message's reactions summed up (domain/reactions.py)."""

from __future__ import annotations

import pytest

from chatd.domain.reactions import ReactionRow, check_emoji, summarise
from chatd.errors import BadRequest


@pytest.mark.parametrize("emoji", ["👍", "❤️", "❤", "👍🏽", "👨‍👩‍👧", "🇫🇷", "*️⃣", "🏳️‍🌈"])
def test_one_emoji_is_taken(emoji: str) -> None:
    assert check_emoji(emoji) == emoji


@pytest.mark.parametrize("text", ["", "a", "👍👍", " 👍", "👍 ", ":+1:", "1", "\u200d",
                                  "👍\u200b", "x" * 40, "🇫", "\ufe0f"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(BadRequest) as refused:
        check_emoji(text)
    assert refused.value.code == "invalid_emoji"


def test_summarise_counts_live_acknowledged_rows() -> None:
    rows = [(1, ReactionRow("👍", 10, 100)), (2, ReactionRow("👍", 11, 100)),
            (3, ReactionRow("❤️", 12, 100)),
            (4, ReactionRow("👍", 13, 100, expires_at=500)),  # expired at 500
            (5, ReactionRow("😮", 14, 100)),  # past the head: not acknowledged yet
            (6, ReactionRow("😮", 9, 10))]  # older than retention
    summary = summarise(rows, 2, now_ms=600, retention_cutoff_ms=50, head_seq=13)
    assert summary == {"👍": (2, True), "❤️": (1, False)}
