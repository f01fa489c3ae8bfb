"""Unread counts that skip reactions, edits and pins (domain/unread.py): the in-memory
index agrees with counting the log, whether it was loaded whole or only its newest rows,
and after it trimmed itself."""

from __future__ import annotations

import random

import pytest

from chatd.domain.models import Conversation, Member, Watermark
from chatd.domain.unread import SnapshotSkips, UncountedSeqs


def _log(rng: random.Random, length: int) -> list[int]:
    """The seqs of the uncounted entries of a log of `length` entries."""
    return [seq for seq in range(1, length + 1) if rng.random() < 0.4]


def _index(uncounted: list[int], loaded_upto: int, keep: int, limit: int) -> UncountedSeqs:
    """The index as the owner builds it from the store (at most `keep` of the newest rows
    written up to `loaded_upto`), then fed the later ones as they are appended."""
    ordinals = {seq: n for n, seq in enumerate(uncounted, 1)}
    stored = [seq for seq in uncounted if seq <= loaded_upto]
    newest = [(seq, ordinals[seq]) for seq in stored[-keep:]] if keep else []

    def older(seq: int) -> int:
        # (Asked later, of a store that by then holds every row appended.)
        return sum(1 for s in uncounted if s <= seq)

    index = UncountedSeqs(newest, complete=len(newest) == len(stored) and keep > 0,
                          older=older, limit=limit)
    for seq in uncounted:
        if seq > loaded_upto:
            assert index.add(seq) == ordinals[seq]
    return index


@pytest.mark.parametrize("seed", range(40))
def test_the_index_counts_what_the_log_holds(seed: int) -> None:
    rng = random.Random(seed)
    length = rng.randint(0, 60)
    uncounted = _log(rng, length)
    index = _index(uncounted, loaded_upto=rng.randint(0, length), keep=rng.randint(1, 8),
                   limit=rng.randint(1, 4))
    assert index.total == len(uncounted)
    for low in range(length + 1):
        for high in range(low, length + 1):
            expected = sum(1 for seq in uncounted if low < seq <= high)
            assert index.between(low, high) == expected, (low, high)


def test_a_conversation_unread_count_skips_them() -> None:
    conv = Conversation(1, "group", "g", 1, 0, head_seq=10)
    conv.members = {1: Member("admin", 1), 2: Member("member", 1)}
    conv.watermarks = {2: Watermark(4, 4)}
    assert conv.unread(2) == 6 and conv.unread(1) == 10  # as before: no index
    conv.uncounted = UncountedSeqs([(3, 1), (5, 2), (6, 3), (10, 4)], complete=True,
                                   older=lambda seq: 0)
    assert conv.unread(2) == 3  # 7, 8, 9 (5, 6 and 10 are not messages)
    assert conv.unread(1) == 6
    conv.uncounted = SnapshotSkips({4: 3})  # as a peer's snapshot says it
    assert conv.unread(2) == 3 and conv.unread(1) == 10
