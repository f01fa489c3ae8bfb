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
from chatd.services.delivery import Delivery
from chatd.services.owner import ConversationOwner


class Receipts:
    def __init__(self, *, delivery: Delivery, owner: ConversationOwner) -> None:
        self._delivery = delivery
        self._owner = owner
        # (conversation, reader) -> (the conversation, watermark before the first move,
        # watermark after the last, whether the reader shares read receipts) since the
        # last flush.
        self._pending: dict[tuple[int, int],
                            tuple[Conversation, Watermark, Watermark, bool]] = {}
        self._on_pending: Callable[[], None] = lambda: None
        self.sent = 0
        #: Whether a conversation's receipts may be sent at all: not across a message
        #: request nobody accepted, nor a block (services/direct_requests.py).
        self.flows: Callable[[Conversation], bool] = lambda _conv: True

    def on_pending(self, wake: Callable[[], None]) -> None:
        """Call `wake` when a receipt is waiting for `flush` (the transport flushes)."""
        self._on_pending = wake

    def moved(self, conv: Conversation, reader: int, before: Watermark,
              after: Watermark, reads_shown: bool) -> None:
        """`reads_shown`: the reader's own setting, which the command carried from the
        shard that knows it (their home, or their socket's shard)."""
        key = (conv.conversation_id, reader)
        pending = self._pending.get(key)
        if pending is None:
            if not self._pending:
                self._on_pending()
            self._pending[key] = (conv, before, after, reads_shown)
        else:
            self._pending[key] = (conv, pending[1], after, reads_shown)

    def flush(self) -> None:
        """Send what moved since the last flush."""
        pending, self._pending = self._pending, {}
        for (_, reader), (conv, before, after, reads_shown) in pending.items():
            self._send(conv, reader, before, after, reads_shown)

    def _send(self, conv: Conversation, reader: int, before: Watermark,
              after: Watermark, reads_shown: bool) -> None:
        if not conv.is_member(reader) or not self.flows(conv):
            return  # left meanwhile, or a request not accepted (or a block)
        delivered = (before.delivered_seq + 1, after.delivered_seq)
        read = (before.read_seq + 1, after.read_seq) if reads_shown else (1, 0)
        delivery_moved = delivered[0] <= delivered[1]
        if not delivery_moved and read[0] > read[1]:
            return  # only a hidden read watermark moved
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
        # Each target's own setting (they may not see read receipts) is applied where
        # their sockets are (Hub.deliver_receipt).
        self._delivery.publish_receipt(targets, conv.conversation_id, reader,
                                       after.delivered_seq,
                                       after.read_seq if reads_shown else None,
                                       delivery_moved)
        self.sent += len(targets)
