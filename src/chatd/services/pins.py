"""The owner's side of pinned messages: the `Pin` command and what a deletion unpins.

A pin or unpin is a `chatd/pin` entry, body `{"target": seq, "pinned": true}`; the
conversation's pins (`records.PINS`, target -> the entry that pinned it) are loaded with
the conversation and shown in its views. A message deleted for everyone, expired or
erased is unpinned with it, with no entry of its own (the deletion's entry says it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatd.domain import deletion, targets
from chatd.domain.models import Conversation, Message
from chatd.domain.pins import plan_pin
from chatd.domain.rules import PIN_CONTENT_TYPE
from chatd.pending import Pending
from chatd.protocol import owner as ops
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.owner import ConversationOwner
from chatd.storage import Batch, records

if TYPE_CHECKING:
    from chatd.services.deletion import Deletions


class Pins:
    def __init__(self, *, owner: ConversationOwner, commands: Commands, clock: Clock,
                 deletions: Deletions) -> None:
        self._owner = owner
        self._commands = commands
        self._clock = clock
        self._deletions = deletions

    def pin(self, command: ops.Pin) -> Pending[None]:
        conversation_id, actor_id, seq = command.conversation_id, command.actor_id, command.seq

        def apply(batch: Batch) -> None:
            conv = self._owner.get(conversation_id)
            target = deletion.readable_entry(conv, actor_id, seq,
                                             self._owner.entry(conversation_id, seq))
            now = self._clock.now_ms()
            if not plan_pin(conv, actor_id, target, command.pinned, now_ms=now,
                            retention_cutoff_ms=self._deletions.retention_cutoff(now)):
                return
            entry = self._owner.append(
                batch, conv, sender_id=actor_id, sender_device=command.device_id,
                content_type=PIN_CONTENT_TYPE,
                body={"target": seq, "pinned": command.pinned}, counted=False)
            if command.pinned:
                conv.pins.append(seq)
                batch.put(records.PINS, (conversation_id, seq), entry.seq)
            else:
                conv.pins.remove(seq)
                batch.delete(records.PINS, (conversation_id, seq))

        return self._commands.enqueue(apply, conversation_id=conversation_id)

    def tombstoned(self, batch: Batch, conv: Conversation, message: Message) -> None:
        if targets.is_message(message) and message.seq in conv.pins:
            self._owner.changing(batch, conv)
            conv.pins.remove(message.seq)
            batch.delete(records.PINS, (conv.conversation_id, message.seq))
