"""The owner's side of reactions: the `React` command, a page's aggregates, and what a
deletion takes with it.

Each change is a `chatd/reaction` entry in the log, body `{"target": seq, "emoji": "👍",
"notify": ["<user id>"]}` (emoji "" when removed). `notify` is computed here, on the owner:
only the reacted-to message's sender is to be notified (not when reacting to your own
message, nor of a removal); every member still gets the entry live. The aggregate is one
`records.REACTIONS` row per (message, user), so a history page's reactions are one range
scan. `records.REACTION_ENTRIES` lists every reaction entry of a message, so deleting the
message tombstones them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from chatd.domain import deletion, targets
from chatd.domain.models import Conversation, Message
from chatd.domain.reactions import ReactionRow, check_emoji, summarise
from chatd.domain.rules import REACTION_CONTENT_TYPE
from chatd.errors import BadRequest
from chatd.pending import Pending
from chatd.protocol import owner as ops
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.owner import ConversationOwner
from chatd.services.pending_rows import PendingRows
from chatd.storage import Batch, Store, records

if TYPE_CHECKING:
    from chatd.services.deletion import Deletions
    from chatd.services.direct_requests import DirectRequests

Summary = dict[str, tuple[int, bool]]

#: The most reaction rows one page's scan reads (a page of 200 messages in a full group).
MAX_PAGE_ROWS = 200 * 1024


class Reactions:
    def __init__(self, *, store: Store, owner: ConversationOwner, commands: Commands,
                 clock: Clock, deletions: Deletions) -> None:
        self._store = store
        self._owner = owner
        self._commands = commands
        self._clock = clock
        self._deletions = deletions
        self._rows: PendingRows[ReactionRow] = PendingRows()
        self._entries: PendingRows[bool] = PendingRows()
        #: Message requests and blocks: who may write to a direct chat (set by the wiring).
        self.requests: DirectRequests | None = None

    def forget_all(self) -> None:
        self._rows.forget_all()
        self._entries.forget_all()

    def forget_where(self, belongs: Callable[[int], bool]) -> None:
        self._rows.forget_where(belongs)
        self._entries.forget_where(belongs)

    # -- the command ------------------------------------------------------------------------

    def react(self, command: ops.React) -> Pending[Summary]:
        emoji = check_emoji(command.emoji) if command.emoji else ""
        if not emoji and not command.remove:
            raise BadRequest("emoji: must be exactly one emoji", code="invalid_emoji")
        conversation_id, user_id, seq = command.conversation_id, command.user_id, command.seq

        def apply(batch: Batch) -> Summary:
            conv = self._owner.get(conversation_id)
            target = deletion.readable_entry(conv, user_id, seq,
                                             self._owner.entry(conversation_id, seq))
            now = self._clock.now_ms()
            cutoff = self._deletions.retention_cutoff(now)
            current = self._current(conversation_id, seq, user_id)
            if current is not None and (0 < current.expires_at <= now or current.ts < cutoff):
                current = None  # expired: the sweeper has not removed it yet
            had = current.emoji if current is not None else ""
            new = emoji
            if command.remove:
                if not had or (emoji and had != emoji):
                    return self._summary(conv, seq, user_id)  # nothing of theirs to remove
                new = ""
            else:
                targets.require_message(target, now_ms=now, retention_cutoff_ms=cutoff,
                                            what="reacted to", code="not_reactable")
            if had == new:
                return self._summary(conv, seq, user_id)  # no change (a retry, say)
            if self.requests is not None:
                self.requests.check_send(conv, user_id)
            notify = [str(target.sender_id)] if new and target.sender_id != user_id else []
            entry = self._owner.append(
                batch, conv, sender_id=user_id, sender_device=command.device_id,
                content_type=REACTION_CONTENT_TYPE,
                body={"target": seq, "emoji": new, "notify": notify}, counted=False)
            key = (conversation_id, seq, user_id)
            row = ReactionRow(new, entry.seq, entry.ts, entry.expires_at) if new else None
            if row is not None:
                batch.put(records.REACTIONS, key, row)
            else:
                batch.delete(records.REACTIONS, key)
            self._rows.put(batch, (conversation_id, seq), user_id, row)
            batch.put(records.REACTION_ENTRIES, (conversation_id, seq, entry.seq), None)
            self._entries.put(batch, (conversation_id, seq), entry.seq, True)
            return self._summary(conv, seq, user_id)

        return self._commands.enqueue(apply, conversation_id=conversation_id)

    def _current(self, conversation_id: int, seq: int, user_id: int) -> ReactionRow | None:
        return self._rows.get((conversation_id, seq), user_id, lambda: self._store.get(
            records.REACTIONS, (conversation_id, seq, user_id)))

    def _rows_of(self, conversation_id: int, seq: int) -> dict[int, ReactionRow]:
        stored = {user_id: row for (_, _, user_id), row in self._store.scan(
            records.REACTIONS, records.pair(conversation_id, seq))}
        return self._rows.merged((conversation_id, seq), stored)

    def _summary(self, conv: Conversation, seq: int, viewer_id: int) -> Summary:
        """The message's reactions once this command's batch has landed (the answer)."""
        now = self._clock.now_ms()
        return summarise(self._rows_of(conv.conversation_id, seq).items(), viewer_id,
                         now_ms=now, retention_cutoff_ms=self._deletions.retention_cutoff(now),
                         head_seq=conv.written_seq)

    # -- reads ------------------------------------------------------------------------------

    def of_page(self, conv: Conversation, viewer_id: int, low: int,
                high: int) -> dict[int, Summary]:
        """The reactions of the messages with low <= seq <= high, by seq (one range
        scan), as acknowledged: what reads show."""
        conversation_id = conv.conversation_id
        rows = self._store.range(records.REACTIONS, records.triple(conversation_id, low, 0),
                                 records.triple(conversation_id, high + 1, 0),
                                 limit=MAX_PAGE_ROWS)
        by_target: dict[int, list[tuple[int, ReactionRow]]] = {}
        for (_, target, user_id), row in rows:
            by_target.setdefault(target, []).append((user_id, row))
        now = self._clock.now_ms()
        cutoff = self._deletions.retention_cutoff(now)
        found = {}
        for target, pairs in by_target.items():
            summary = summarise(pairs, viewer_id, now_ms=now, retention_cutoff_ms=cutoff,
                                head_seq=conv.head_seq)
            if summary:
                found[target] = summary
        return found

    # -- deletion (Deletions.tombstone calls this for every entry it tombstones) -----------

    def tombstoned(self, batch: Batch, conv: Conversation, message: Message) -> None:
        conversation_id = conv.conversation_id
        if message.content_type == REACTION_CONTENT_TYPE:
            target = targets.target_of(message)
            if target is None:
                return
            batch.delete(records.REACTION_ENTRIES, (conversation_id, target, message.seq))
            self._entries.put(batch, (conversation_id, target), message.seq, None)
            current = self._current(conversation_id, target, message.sender_id)
            if current is not None and current.seq == message.seq:
                # Its aggregate goes with it (an expired reaction counts no more).
                batch.delete(records.REACTIONS, (conversation_id, target, message.sender_id))
                self._rows.put(batch, (conversation_id, target), message.sender_id, None)
            return
        if not targets.is_message(message):
            return
        # A message deleted for everyone (or expired, retired, erased): every reaction to
        # it goes, entries and aggregate.
        seq = message.seq
        stored = {entry: True for (_, _, entry), _ in self._store.scan(
            records.REACTION_ENTRIES, records.pair(conversation_id, seq))}
        for entry_seq in self._entries.merged((conversation_id, seq), stored):
            entry = self._owner.entry(conversation_id, entry_seq)
            if entry is not None and entry.content_type == REACTION_CONTENT_TYPE:
                self._deletions.tombstone(batch, conv, entry)  # (back here, above)
        for user_id in self._rows_of(conversation_id, seq):
            batch.delete(records.REACTIONS, (conversation_id, seq, user_id))
            self._rows.put(batch, (conversation_id, seq), user_id, None)
