"""The owner's side of edits: the `Edit` command, the latest bodies of a page, a
message's edit history, and what a deletion takes with it.

An edit is a `chatd/edit` entry, body `{"target": seq, "body": <the new body>}`: text for
text/* messages, bytes (the new ciphertext) for opaque ones. The text lives in the entry
only; `records.EDITS` indexes a message's edit entries, so reads find the latest body with
one range scan per page plus a read of each edited message's newest edit, and deleting
the message tombstones every edit (their bodies hold text).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from chatd.config import LimitsConfig
from chatd.domain import deletion, targets
from chatd.domain.edits import plan_edit
from chatd.domain.models import Conversation, Message
from chatd.domain.rules import EDIT_CONTENT_TYPE
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

#: The most edit rows one page's scan reads.
MAX_PAGE_ROWS = 20_000


class Edits:
    def __init__(self, *, store: Store, owner: ConversationOwner, commands: Commands,
                 limits: LimitsConfig, clock: Clock, deletions: Deletions) -> None:
        self._store = store
        self._owner = owner
        self._commands = commands
        self._limits = limits
        self._clock = clock
        self._deletions = deletions
        self._rows: PendingRows[bool] = PendingRows()
        #: Message requests and blocks: who may write to a direct chat (set by the wiring).
        self.requests: DirectRequests | None = None

    def forget_all(self) -> None:
        self._rows.forget_all()

    def forget_where(self, belongs: Callable[[int], bool]) -> None:
        self._rows.forget_where(belongs)

    # -- the command ------------------------------------------------------------------------

    def edit(self, command: ops.Edit) -> Pending[tuple[int, int]]:
        conversation_id, user_id, seq, body = (command.conversation_id, command.user_id,
                                               command.seq, command.body)
        if isinstance(body, dict):
            raise BadRequest("body: text or bytes", code="invalid_field")

        def apply(batch: Batch) -> tuple[int, int]:
            conv = self._owner.get(conversation_id)
            target = deletion.readable_entry(conv, user_id, seq,
                                             self._owner.entry(conversation_id, seq))
            now = self._clock.now_ms()
            new_body = plan_edit(target, user_id, body, now_ms=now,
                                 window_s=self._limits.edit_window_s,
                                 retention_cutoff_ms=self._deletions.retention_cutoff(now),
                                 max_bytes=self._limits.max_message_bytes)
            latest = self._latest_written(conversation_id, seq)
            if latest is not None and isinstance(latest.body, dict) \
                    and latest.body.get("body") == new_body:
                return latest.seq, latest.ts  # the same edit again (a retry)
            if self.requests is not None:
                self.requests.check_send(conv, user_id)
            entry = self._owner.append(
                batch, conv, sender_id=user_id, sender_device=command.device_id,
                content_type=EDIT_CONTENT_TYPE, body={"target": seq, "body": new_body},
                counted=False)
            batch.put(records.EDITS, (conversation_id, seq, entry.seq), None)
            self._rows.put(batch, (conversation_id, seq), entry.seq, True)
            return entry.seq, entry.ts

        return self._commands.enqueue(apply, conversation_id=conversation_id)

    def _edit_seqs(self, conversation_id: int, seq: int) -> list[int]:
        """The seqs of the message's edit entries as the commands so far left them."""
        stored = {edit: True for (_, _, edit), _ in self._store.scan(
            records.EDITS, records.pair(conversation_id, seq))}
        return sorted(self._rows.merged((conversation_id, seq), stored))

    def _latest_written(self, conversation_id: int, seq: int) -> Message | None:
        for edit_seq in reversed(self._edit_seqs(conversation_id, seq)):
            entry = self._owner.entry(conversation_id, edit_seq)
            if entry is not None and entry.content_type == EDIT_CONTENT_TYPE:
                return entry
        return None

    # -- reads ------------------------------------------------------------------------------

    def of_page(self, conv: Conversation, low: int, high: int) -> dict[int, Message]:
        """The newest live edit entry of each edited message with low <= seq <= high, as
        acknowledged (one range scan, one read per edited message)."""
        conversation_id = conv.conversation_id
        rows = self._store.range(records.EDITS, records.triple(conversation_id, low, 0),
                                 records.triple(conversation_id, high + 1, 0),
                                 limit=MAX_PAGE_ROWS)
        by_target: dict[int, list[int]] = {}
        for (_, target, edit_seq), _ in rows:
            if edit_seq <= conv.head_seq:
                by_target.setdefault(target, []).append(edit_seq)
        now = self._clock.now_ms()
        cutoff = self._deletions.retention_cutoff(now)
        found = {}
        for target, edit_seqs in by_target.items():
            for edit_seq in reversed(edit_seqs):
                entry = self._store.get(records.MESSAGES, (conversation_id, edit_seq))
                if entry is not None and entry.content_type == EDIT_CONTENT_TYPE \
                        and not deletion.is_due(entry, now, cutoff):
                    found[target] = entry
                    break
        return found

    def history(self, query: ops.EditHistory) -> list[tuple[int, object, int]]:
        """(seq, body, ts) of the original and then of each live edit, oldest first;
        [] for a message deleted (or expired) meanwhile."""
        conversation_id = query.conversation_id
        conv = self._owner.get(conversation_id)
        original = deletion.readable_entry(conv, query.user_id, query.seq,
                                           self._owner.entry(conversation_id, query.seq))
        shown = self._deletions.shown(conversation_id, query.user_id, [original])
        if not shown:
            raise deletion.unknown_message(query.seq)  # they deleted it for themselves
        if not targets.is_message(shown[0]):
            return []
        found: list[tuple[int, object, int]] = [(original.seq, original.body, original.ts)]
        now = self._clock.now_ms()
        cutoff = self._deletions.retention_cutoff(now)
        for edit_seq in self._edit_seqs(conversation_id, query.seq):
            entry = self._store.get(records.MESSAGES, (conversation_id, edit_seq))
            if entry is None or edit_seq > conv.head_seq \
                    or entry.content_type != EDIT_CONTENT_TYPE \
                    or deletion.is_due(entry, now, cutoff) or not isinstance(entry.body, dict):
                continue
            found.append((entry.seq, entry.body.get("body"), entry.ts))
        return found

    # -- deletion (Deletions.tombstone calls this for every entry it tombstones) -----------

    def tombstoned(self, batch: Batch, conv: Conversation, message: Message) -> None:
        conversation_id = conv.conversation_id
        if message.content_type == EDIT_CONTENT_TYPE:
            target = targets.target_of(message)
            if target is not None:
                batch.delete(records.EDITS, (conversation_id, target, message.seq))
                self._rows.put(batch, (conversation_id, target), message.seq, None)
            return
        if not targets.is_message(message):
            return
        # The message went: so do its edits, whose bodies hold its text.
        for edit_seq in self._edit_seqs(conversation_id, message.seq):
            entry = self._owner.entry(conversation_id, edit_seq)
            if entry is not None and entry.content_type == EDIT_CONTENT_TYPE:
                self._deletions.tombstone(batch, conv, entry)  # (back here, above)
