"""Unread counts that skip the log entries which are not messages.

A conversation's unread count for a member was `head_seq - read_seq`: every entry after
their read mark. Reactions, edits and pins are log entries too (seqs stay dense), but they
must not make a conversation unread. The owner numbers those entries as it appends them
(their *ordinal*: the 1st, 2nd, ... such entry of the log, stored with each in
`records.UNCOUNTED`), so the number of them in any seq range is a difference of two
ordinals, and

    unread = (head - read) - (ordinal_at(head) - ordinal_at(read))

where `ordinal_at(s)` is the ordinal of the last such entry at or before `s`. The owner
keeps the newest ones in memory (`UncountedSeqs`): a view costs a bisection, and one
store read (`older`) only for a member whose read mark is older than all of those.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable


class UncountedSeqs:
    """The seqs of a conversation's uncounted entries from `floor` on (all of them when
    `floor` is 0), with the ordinal of the one before them (`base`)."""

    __slots__ = ("_base", "_floor", "_limit", "_older", "_seqs")

    def __init__(self, newest: list[tuple[int, int]], *, complete: bool,
                 older: Callable[[int], int], limit: int = 1024) -> None:
        """`newest`: (seq, ordinal) of the newest uncounted entries, ascending; `complete`
        when they are all there are. `older(seq)`: the ordinal at `seq` from the store."""
        self._seqs = [seq for seq, _ in newest]
        self._base = newest[0][1] - 1 if newest else 0
        self._floor = 0 if complete or not newest else newest[0][0]
        self._older = older
        self._limit = limit

    @property
    def total(self) -> int:
        """The ordinal of the newest uncounted entry written (0: none)."""
        return self._base + len(self._seqs)

    def add(self, seq: int) -> int:
        """An uncounted entry appended at `seq` (above every one before): its ordinal."""
        self._seqs.append(seq)
        if len(self._seqs) >= 2 * self._limit:
            # Trimmed in bulk, as RecentSenders: a read mark older than what is kept
            # costs one store read.
            drop = len(self._seqs) - self._limit
            self._base += drop
            del self._seqs[:drop]
            self._floor = self._seqs[0]
        return self.total

    def ordinal_at(self, seq: int) -> int:
        """How many uncounted entries have a seq <= `seq`."""
        if seq >= self._floor - 1:
            # Every uncounted entry from `floor` on is in memory; the one at `floor` is
            # numbered base + 1, so exactly `base` of them lie below it.
            return self._base + bisect.bisect_right(self._seqs, seq)
        return self._older(seq)

    def between(self, low: int, high: int) -> int:
        """How many uncounted entries have low < seq <= high."""
        if high <= low or (not self._seqs and self._floor == 0):
            return 0
        if self._seqs and low >= self._seqs[-1]:
            return 0  # the common case: nothing uncounted since the member read
        return max(0, self.ordinal_at(high) - self.ordinal_at(low))


class SnapshotSkips:
    """What a conversation's snapshot (a view sent over the mesh) says of its uncounted
    entries: how many lie above each of its members' read marks, up to its head."""

    __slots__ = ("_above",)

    def __init__(self, above: dict[int, int]) -> None:
        self._above = above

    def between(self, low: int, high: int) -> int:
        return self._above.get(low, 0)

    @property
    def counts(self) -> dict[int, int]:
        return self._above
