"""Reading a conversation's durable log: pages of messages, one entry, the head.

Every reader of the log (history, catch-up, the owner's restart) goes through here, so the
key layout of `records.MESSAGES` is known in one place above storage.
"""

from __future__ import annotations

from chatd.domain.models import Message
from chatd.storage import Store, records
from chatd.storage.records import MAX_U64, pair


class ConversationLog:
    def __init__(self, store: Store) -> None:
        self._store = store

    def read(self, conversation_id: int, *, after: int, before: int | None, limit: int,
             newest_first: bool) -> list[Message]:
        """Messages with after < seq < before (no upper bound with None), at most `limit`,
        taken from the oldest end (or the newest end with `newest_first`); always in
        ascending seq order."""
        stop = pair(conversation_id, MAX_U64 if before is None else before)
        if after + 1 > MAX_U64 or (before is not None and before <= after + 1):
            return []
        rows = self._store.range(records.MESSAGES, pair(conversation_id, after + 1), stop,
                                 limit=limit, newest_first=newest_first)
        return [message for _, message in rows]

    def entry(self, conversation_id: int, seq: int) -> Message | None:
        return self._store.get(records.MESSAGES, (conversation_id, seq))

    def head(self, conversation_id: int) -> tuple[int, int]:
        """(seq, ts) of the newest entry, (0, 0) when the log is empty."""
        newest = self.read(conversation_id, after=0, before=None, limit=1, newest_first=True)
        return (newest[0].seq, newest[0].ts) if newest else (0, 0)
