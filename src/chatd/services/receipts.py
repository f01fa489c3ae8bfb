"""Receipts as WhatsApp sends them: a watermark move goes to the senders of what it covers.

When a reader's watermarks move from (delivered d0, read r0) to (d1, r1), the receipt goes
to the distinct senders of the messages in (d0, d1] and (r0, r1], on all their devices,
and not to the reader; in a direct conversation, to the other side. Other members learn
nothing unless they ask for a message's status. So one post to a group of 50 costs at
most 49 receipt frames to its sender, not 49 x 50 to everyone.

Moves are coalesced: however many acks and reads a reader sends, at most one receipt per
(conversation, reader) goes out per flush, carrying the final watermarks.

Privacy (`read_receipts`, a profile setting): a reader who turned it off has their read
watermark shown to nobody (delivery still is), and, as in WhatsApp, sees nobody's.
"""

from __future__ import annotations

from collections.abc import Callable

from chatd.domain.models import Conversation, Watermark
from chatd.protocol import frames
from chatd.services.live import Hub
from chatd.services.owner import ConversationOwner


class Receipts:
    def __init__(self, *, hub: Hub, owner: ConversationOwner,
                 shares_read_receipts: Callable[[int], bool]) -> None:
        self._hub = hub
        self._owner = owner
        self._shares_read = shares_read_receipts
        # (conversation, reader) -> (the conversation, watermark before the first move,
        # watermark after the last) since the last flush.
        self._pending: dict[tuple[int, int], tuple[Conversation, Watermark, Watermark]] = {}
        self._on_pending: Callable[[], None] = lambda: None
        self.sent = 0

    def on_pending(self, wake: Callable[[], None]) -> None:
        """Call `wake` when a receipt is waiting for `flush` (the transport flushes)."""
        self._on_pending = wake

    def moved(self, conv: Conversation, reader: int, before: Watermark,
              after: Watermark) -> None:
        key = (conv.conversation_id, reader)
        pending = self._pending.get(key)
        if pending is None:
            if not self._pending:
                self._on_pending()
            self._pending[key] = (conv, before, after)
        else:
            self._pending[key] = (conv, pending[1], after)

    def flush(self) -> None:
        """Send what moved since the last flush."""
        pending, self._pending = self._pending, {}
        for (_, reader), (conv, before, after) in pending.items():
            self._send(conv, reader, before, after)

    def _send(self, conv: Conversation, reader: int, before: Watermark,
              after: Watermark) -> None:
        if not conv.is_member(reader):
            return  # left meanwhile
        reads_shown = self._shares_read(reader)
        delivered = (before.delivered_seq + 1, after.delivered_seq)
        read = (before.read_seq + 1, after.read_seq) if reads_shown else (1, 0)
        if conv.kind == "direct":
            targets = {user_id for user_id in conv.members if user_id != reader}
        else:
            targets = set()
            for low, high in (delivered, read):
                if low <= high:  # an empty range (nothing moved) names nobody
                    targets |= self._owner.senders_between(conv, low, high)
            targets.discard(reader)
            targets &= conv.members.keys()
        if not targets:
            return
        full = frames.receipt_frame(conv.conversation_id, reader, after.delivered_seq,
                                    after.read_seq if reads_shown else None)
        delivered_only = None
        for target in targets:
            if reads_shown and not self._shares_read(target):
                # They chose not to see read receipts: delivery only, if that moved.
                if delivered[1] < delivered[0]:
                    continue
                if delivered_only is None:
                    delivered_only = frames.receipt_frame(conv.conversation_id, reader,
                                                          after.delivered_seq, None)
                frame = delivered_only
            elif not reads_shown and delivered[1] < delivered[0]:
                continue  # only the hidden read watermark moved
            else:
                frame = full
            self._hub.publish((target,), frame)
            self.sent += 1
