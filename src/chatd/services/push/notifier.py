"""The notifier, on each user's home: which device to push for which message, and when.

Every durable message for a user passes through their home (docs/architecture.md,
"Delivery and the connection directory"); `Delivery` hands it here too
(`message_landed`), in memory, before anyone could have acknowledged it. For each
recipient but the sender, for each of their devices with a subscription:

- nothing, when the conversation is muted for them and the message does not mention
  them (services/notify_prefs.py), or the entry is not one a person is told of (system
  entries, edits, pins, deletions; a reaction only tells the author of the message
  reacted to: its `notify` list);
- at once, when the device has no live socket: none on this shard, and none on
  another that told this home (services/push/devices.py);
- after `push.grace_s`, unless the device acknowledges the message first (its cursor
  hint, `acked`), when it has, or may have, a live socket.

Coalescing: a device has at most one pending push per conversation (later messages
update it: the newest seq, unread +1) and is pushed at most once per conversation per
`push.coalesce_s`; Web Push's `Topic` lets the push service replace a push not yet
delivered with the next. `unread` counts the messages this home saw for the device in
that conversation since the device last acknowledged one (in memory: a badge, not a
record; it restarts from the next message after a restart of the home).

What a push says is decided when it is sent (`_prepare`): the conversation's kind
(direct: `Urgency: high`; group: normal) and whether it is end-to-end encrypted, asked of
its owner once and cached; the sender's display name and the text only when the user
allows previews and the conversation is not encrypted. Otherwise "New message" (the
payload carries neither).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from chatd.config import PushConfig
from chatd.domain import push as rules
from chatd.domain.models import Message
from chatd.domain.rules import REACTION_CONTENT_TYPE, RESERVED_CONTENT_TYPES
from chatd.errors import ChatdError
from chatd.services.notify_prefs import NotifyPrefs
from chatd.services.push.sender import PushJob, PushSender
from chatd.services.push.subscriptions import PushSubscriptions

log = logging.getLogger(__name__)

#: (kind, encrypted) of a conversation, asked of its owner as one member (the recipient).
ConversationFacts = Callable[[int, int], Awaitable[tuple[str, bool]]]
#: A user's display name (from their home).
DisplayName = Callable[[int], Awaitable[str]]
#: Conversations whose facts are cached at most; (kind and encryption never change).
_FACTS_CACHE = 50_000
#: Unread counters kept at most (devices x conversations); past it they start afresh.
_UNREAD_CAP = 200_000


@dataclass
class _Pending:
    user_id: int
    device_id: int
    conversation_id: int
    seq: int
    sender_id: int
    #: The start of the text (None: not text), shown only if the rules allow.
    preview: str | None
    due: float


class Notifier:
    def __init__(self, *, config: PushConfig, subscriptions: PushSubscriptions,
                 prefs: NotifyPrefs, sender: PushSender, now_ms: Callable[[], int],
                 devices_online: Callable[[int], set[int]],
                 facts: ConversationFacts, display_name: DisplayName) -> None:
        self._config = config
        self._subscriptions = subscriptions
        self._prefs = prefs
        self._sender = sender
        self._now_ms = now_ms
        self._devices_online = devices_online
        self._facts = facts
        self._display_name = display_name
        self._facts_cache: dict[int, tuple[str, bool]] = {}
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._unread: dict[tuple[int, int], int] = {}
        self._last_push: dict[tuple[int, int], float] = {}
        self._heap: list[tuple[float, int, tuple[int, int]]] = []
        self._order = 0
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: Pushes not made because the pending set was full (added to the sender's drops).
        self.dropped = 0

    # -- what comes in (synchronous: called from delivery and ack paths) -----------------------

    def message_landed(self, users: Iterable[int], message: Callable[[], Message]) -> None:
        """A durable message for users homed here (`message()` decodes it, once, only if
        one of them has a subscription)."""
        if not self._config.enabled:
            return
        decoded: Message | None = None
        for user_id in users:
            subs = self._subscriptions.of(user_id)
            if not subs:
                continue
            if decoded is None:
                decoded = message()
                if decoded.content_type in RESERVED_CONTENT_TYPES \
                        and decoded.content_type != REACTION_CONTENT_TYPE:
                    return
            self._landed(user_id, subs, decoded)

    def _landed(self, user_id: int, subs: dict[int, dict[str, Any]], message: Message) -> None:
        if user_id == message.sender_id:
            return
        preview: str | None
        if message.content_type == REACTION_CONTENT_TYPE:
            body = message.body if isinstance(message.body, dict) else {}
            emoji = body.get("emoji")
            if str(user_id) not in (body.get("notify") or ()) or not emoji:
                return
            preview = f"reacted {emoji}"
        else:
            preview = rules.preview_of(message.content_type, message.body,
                                       self._config.preview_chars)
        conversation_id = message.conversation_id
        if not self._prefs.notifies(user_id, conversation_id, self._now_ms(),
                                    mentioned=user_id in message.mentions):
            return
        now = trio.current_time()
        online = self._devices_online(user_id)
        for device_id in {record.get("device_id") for record in subs.values()}:
            if not isinstance(device_id, int):
                continue
            key = (device_id, conversation_id)
            unread = self._unread.get(key, 0) + 1
            if len(self._unread) >= _UNREAD_CAP and key not in self._unread:
                self._unread.clear()
            self._unread[key] = unread
            due = now + self._config.grace_s if device_id in online else now
            pending = self._pending.get(key)
            if pending is None:
                if len(self._pending) >= self._config.queue_size:
                    self.dropped += 1
                    continue
                pending = _Pending(user_id, device_id, conversation_id, message.seq,
                                   message.sender_id, preview, due)
                self._pending[key] = pending
                self._schedule(key, due)
            else:
                pending.seq = max(pending.seq, message.seq)
                pending.sender_id, pending.preview = message.sender_id, preview
                if due < pending.due:
                    pending.due = due
                    self._schedule(key, due)

    def acked(self, device_id: int, conversation_id: int, seq: int) -> None:
        """A device acknowledged `seq` (a cursor hint on its home): it has the messages."""
        key = (device_id, conversation_id)
        pending = self._pending.get(key)
        if pending is not None and seq >= pending.seq:
            del self._pending[key]
        if pending is None or seq >= pending.seq:
            self._unread.pop(key, None)

    def forget_device(self, user_id: int, device_id: int) -> None:
        for key in [key for key in self._pending if key[0] == device_id]:
            del self._pending[key]

    def _schedule(self, key: tuple[int, int], due: float) -> None:
        self._order += 1
        heapq.heappush(self._heap, (due, self._order, key))
        if self._heap[0][2] == key:
            self._wake.set()

    # -- the loop --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    wait = self._heap[0][0] - trio.current_time() if self._heap else math.inf
                    if wait > 0:
                        with trio.move_on_after(wait):
                            await self._wake.wait()
                        self._wake = trio.Event()
                        continue
                    self._due(heapq.heappop(self._heap)[2])
            finally:
                self._nursery = None

    def _due(self, key: tuple[int, int]) -> None:
        pending = self._pending.get(key)
        now = trio.current_time()
        if pending is None or pending.due > now:
            return  # acknowledged, or moved to a later time (another heap entry has it)
        last = self._last_push.get(key)
        if last is not None and now < last + self._config.coalesce_s:
            pending.due = last + self._config.coalesce_s
            self._schedule(key, pending.due)
            return
        del self._pending[key]
        self._last_push[key] = now
        if len(self._last_push) > 4 * self._config.queue_size:
            horizon = now - self._config.coalesce_s
            self._last_push = {k: t for k, t in self._last_push.items() if t > horizon}
        assert self._nursery is not None
        self._nursery.start_soon(self._prepare, pending, self._unread.get(key, 1))

    async def _prepare(self, pending: _Pending, unread: int) -> None:
        subs = [(sub_id, record) for sub_id, record
                in self._subscriptions.of(pending.user_id).items()
                if record.get("device_id") == pending.device_id]
        if not subs:
            return
        try:
            kind, encrypted = await self._conversation(pending.conversation_id,
                                                       pending.user_id)
        except ChatdError as exc:
            # Its owner cannot say now: push without the details rather than not at all.
            log.debug("push: conversation %d not known (%s)", pending.conversation_id, exc)
            kind, encrypted = "group", True
        sender_name: str | None = None
        preview: str | None = None
        if not encrypted and self._prefs.previews(pending.user_id):
            preview = pending.preview
            try:
                sender_name = await self._display_name(pending.sender_id)
            except ChatdError:
                sender_name = None
        data = rules.payload(conversation_id=pending.conversation_id, seq=pending.seq,
                             unread=unread, sender_name=sender_name, preview=preview)
        for sub_id, record in subs:
            self._sender.submit(PushJob(pending.user_id, sub_id, record, data,
                                        rules.urgency(kind), pending.conversation_id))

    async def _conversation(self, conversation_id: int, user_id: int) -> tuple[str, bool]:
        cached = self._facts_cache.get(conversation_id)
        if cached is None:
            cached = await self._facts(conversation_id, user_id)
            if len(self._facts_cache) >= _FACTS_CACHE:
                self._facts_cache.clear()
            self._facts_cache[conversation_id] = cached
        return cached
