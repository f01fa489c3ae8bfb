"""Sending into a conversation's log, reading it back, receipts: the client's side.

This is the shard a client is connected to. It checks what it can without the
conversation (the shape of a send, the size of a body), then hands the work to the
conversation's owner as a typed command through the `Router`, here or across the mesh.
A send is acknowledged only when the owner's batch that holds it is durable; the triple
(conversation, sender, client_msg_id) identifies a send, so a retry gets the original
answer and writes nothing.

Device cursors (where a device's catch-up starts) live on the user's home shard. An ack
moves them there and moves the user's delivered watermark on the owner; both are hints
(docs/architecture.md, "Delivery hints").
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from chatd.config import LimitsConfig
from chatd.domain import replies, rules
from chatd.domain.content_filter import ContentFilter
from chatd.domain.media import Attaching
from chatd.domain.models import Conversation, HistoryPage, SendResult, Session, Watermark
from chatd.domain.ratelimit import KeyedRateLimiter
from chatd.errors import BadRequest, ChatdError, Forbidden, PayloadTooLarge, RateLimited
from chatd.pending import Pending
from chatd.protocol import owner as ops
from chatd.services.commands import Commands
from chatd.services.owner import ConversationOwner
from chatd.services.owner_api import PAGE_BYTES, TYPING_BURST, TYPING_PER_SECOND, OwnerApi
from chatd.services.ratelimits import RateLimits
from chatd.services.routing import Router
from chatd.storage import Batch, Store, records

if TYPE_CHECKING:
    from chatd.services.media import MediaService
    from chatd.services.mentions import MentionResolver

#: Whether each of some users shares read receipts (their profile setting, from homes).
ReadReceiptSettings = Callable[[list[int]], Awaitable[dict[int, bool]]]


def _nothing(batch: Batch) -> None:
    """A command that writes nothing of its own: the batch it makes carries the hints."""


class MessagingService:
    def __init__(self, *, store: Store, router: Router, owner: ConversationOwner,
                 owner_api: OwnerApi, commands: Commands,
                 read_receipt_settings: ReadReceiptSettings, limits: LimitsConfig,
                 ratelimits: RateLimits) -> None:
        self._store = store
        self._router = router
        self._owner = owner
        self._owner_api = owner_api
        self._commands = commands
        self._read_settings = read_receipt_settings
        self._limits = limits
        self._ratelimits = ratelimits
        # Acks' cursor rows not written yet (this is their device's home),
        # (device, conversation) -> seq.
        self._cursor_hints: dict[tuple[int, int], int] = {}
        # Set when an ack leaves a hint, for the hint writer.
        self._hints_waiting = trio.Event()
        #: Told of every ack recorded here, the device's home: (device, conversation,
        #: seq). The push notifier's seam (services/push/notifier.py).
        self.ack_listeners: list[Callable[[int, int, int], None]] = []
        # Typing notices from this shard's clients, as the owner limits them.
        self._typing_limit = KeyedRateLimiter(per_second=TYPING_PER_SECOND,
                                              burst=TYPING_BURST)
        #: Resolves attachments (services/media.py); set by the wiring.
        self.media: MediaService | None = None
        #: Sees text/* bodies before they are routed (domain/content_filter.py); None
        #: (the default) costs a send nothing.
        self.content_filter: ContentFilter | None = None
        #: Resolves a text's @handles to ids (services/mentions.py); set by the wiring.
        self.mentions: MentionResolver | None = None

    async def member_view(self, session: Session, conversation_id: int) -> Conversation:
        """The conversation, if the caller is a member; 404 alike whether it does not
        exist or the caller is not in it."""
        conv: Conversation = await self._router.ask(
            ops.View(conversation_id, session.user_id))
        return conv

    async def send(self, session: Session, *, conversation_id: int, client_msg_id: str,
                   content_type: str, body: str | bytes,
                   attachments: tuple[Attaching, ...] = (), reply_to: int = 0,
                   mentions: list[int] | None = None,
                   address: str | None = None) -> SendResult:
        records = await self.attach(session, conversation_id, attachments)
        mentioned = await self.resolve_mentions(content_type, body, mentions or [])
        pending = self.start_send(session, conversation_id=conversation_id,
                                  client_msg_id=client_msg_id, content_type=content_type,
                                  body=body, attachments=records, reply_to=reply_to,
                                  mentions=mentioned, address=address)
        return await pending.wait()

    async def resolve_mentions(self, content_type: str, body: str | bytes,
                               explicit: list[int]) -> list[int]:
        """Before a send: the ids it mentions, explicit and by @handle (services/mentions.py);
        the owner keeps the members among them."""
        if self.mentions is None:
            return replies.check_mention_ids(explicit)
        return await self.mentions.resolve(content_type, body, explicit)

    async def attach(self, session: Session, conversation_id: int,
                     media_ids: tuple[Attaching, ...]) -> list[dict[str, Any]]:
        """Before a send that carries media: each media's shard checks the sender may send
        it and counts the reference (services/media.py); the records go into the message."""
        if not media_ids:
            return []
        if self.media is None:
            raise BadRequest("attachments: this server stores no media")
        return await self.media.attach(session.user_id, conversation_id, list(media_ids))

    def start_send(self, session: Session, *, conversation_id: int, client_msg_id: str,
                   content_type: str, body: str | bytes,
                   attachments: list[dict[str, Any]] | None = None, reply_to: int = 0,
                   mentions: list[int] | None = None, forwarded: int = 0,
                   address: str | None = None) -> Pending[SendResult]:
        """Check and route a send now; sends started one after another keep their order.
        Await the result for the answer, which comes once the message is durable.
        `attachments`: the records `attach` gave; `mentions`: the ids `resolve_mentions`
        gave; `forwarded`: a forwarded copy's hop count (services/forwarding.py);
        `address`: the client's (rate limits)."""
        replies.check_reply_to(reply_to)
        client_msg_id = rules.check_client_msg_id(client_msg_id)
        content_type = rules.check_content_type(content_type)
        if rules.is_text_content(content_type) != isinstance(body, str):
            raise BadRequest("body: text/* content types take a string body, others take bytes")
        size = len(body.encode()) if isinstance(body, str) else len(body)
        if size > self._limits.max_message_bytes:
            raise PayloadTooLarge(
                f"body is {size} bytes; the limit is {self._limits.max_message_bytes}",
                code="body_too_large")
        if self.content_filter is not None and isinstance(body, str):
            verdict = self.content_filter.check(conversation_id, session.user_id,
                                                content_type, body)
            if not verdict.allowed:
                raise Forbidden(f"this message was not sent: {verdict.reason}",
                                code="content_blocked")
        self._take_send(session.user_id, address, size)
        return self._router.submit(ops.Send(conversation_id, session.user_id,
                                            session.device_id, client_msg_id, content_type,
                                            body, list(attachments or ()), reply_to,
                                            list(mentions or ()), forwarded))

    def _take_send(self, user_id: int, address: str | None, size: int) -> None:
        """The `messages` and `message_bytes` buckets: both or neither are charged."""
        self._ratelimits.take("messages", account=user_id, address=address)
        try:
            self._ratelimits.take("message_bytes", account=user_id, address=address,
                                  cost=size)
        except RateLimited:
            self._ratelimits.refund("messages", account=user_id, address=address)
            raise

    async def history(self, session: Session, conversation_id: int, *, after: int | None,
                      before: int | None, limit: int | None) -> HistoryPage:
        """A page of the log in ascending seq order (OwnerApi.history)."""
        for name, value in (("after", after), ("before", before)):
            if value is not None and value < 0:
                raise BadRequest(f"{name}: must not be negative")
        if limit is not None and not 1 <= limit <= self._limits.history_page_max:
            raise BadRequest(f"limit: must be within 1..{self._limits.history_page_max}")
        # Bounded in bytes only when the page crosses the mesh (it must fit a frame).
        max_bytes = 0 if self._router.owns(conversation_id) else PAGE_BYTES
        page: HistoryPage = await self._router.ask(ops.History(
            conversation_id, session.user_id, -1 if after is None else after,
            -1 if before is None else before, limit or 0, max_bytes))
        return page

    async def delete_message(self, session: Session, conversation_id: int, seq: int, *,
                             for_everyone: bool, address: str | None = None) -> None:
        """Delete an entry for everyone, or hide it from the caller (services/deletion.py,
        on the owner). Each writes to the conversation as a message does (a tombstone and
        an entry, or a hidden row): the `messages` bucket."""
        if seq < 0:
            raise BadRequest("seq: must not be negative", code="invalid_field")
        self._ratelimits.take("messages", account=session.user_id, address=address)
        await self._router.ask(ops.DeleteMessage(conversation_id, session.user_id, seq,
                                                 for_everyone))

    async def delivery_starts(self, session: Session,
                              cursors: dict[int, int]) -> list[tuple[Conversation, int]]:
        """The caller's conversations with where this device's delivery starts in each,
        asked of every shard at once (each owner indexes its own conversations by
        member). A shard that cannot be reached leaves its conversations out: they
        cannot be written meanwhile, and their next message starts the catch-up."""
        found: list[tuple[Conversation, int]] = []

        async def ask(shard: str) -> None:
            after = -1
            while after:
                query = ops.ConversationsOf(0, session.user_id, session.device_id,
                                            max(after, 0), cursors)
                if self._router.is_local(shard):
                    page, after = self._owner_api.conversations_of(query)
                else:
                    try:
                        page, after = await self._router.remote(shard, query).wait()
                    except ChatdError:
                        return
                found.extend(page)

        async with trio.open_nursery() as nursery:
            for shard in self._router.shards:
                nursery.start_soon(ask, shard)
        return found

    async def conversations_of(self, session: Session) -> list[Conversation]:
        """The caller's conversations, the most recently active first."""
        result = [conv for conv, _ in await self.delivery_starts(session, {})]
        result.sort(key=lambda conv: conv.last_ts, reverse=True)
        return result

    def cursors_of(self, device_id: int) -> dict[int, int]:
        """conversation_id -> the seq the device acknowledged (its catch-up starts after
        it); this shard must be the device's home."""
        cursors = {conversation_id: seq for (_, conversation_id), seq in
                   self._store.scan(records.CURSORS, records.u64(device_id))}
        # Acks not written yet (a reconnect within the hint interval) count too.
        for (hinted_device, conversation_id), seq in self._cursor_hints.items():
            if hinted_device == device_id:
                cursors[conversation_id] = max(seq, cursors.get(conversation_id, 0))
        return cursors

    async def mark_read(self, session: Session, conversation_id: int, seq: int) -> Watermark:
        shares = await self._read_settings([session.user_id])
        return await self.start_mark_read(session, conversation_id, seq,
                                          shares.get(session.user_id, True)).wait()

    def start_mark_read(self, session: Session, conversation_id: int, seq: int,
                        shares_read: bool) -> Pending[Watermark]:
        """`shares_read`: the caller's read_receipts setting (whether others are told)."""
        if seq < 0:
            raise BadRequest("seq: must not be negative", code="invalid_field")
        return self._router.submit(ops.MarkRead(conversation_id, session.user_id, seq,
                                                shares_read))

    def check_ack(self, session: Session, conversation_id: int, seq: int) -> None:
        """Refuse an ack the owner would refuse, where that can be known here (the owner
        checks again; a remote owner drops a bad ack silently, as it is a hint)."""
        if seq < 0:
            raise BadRequest("seq: must not be negative", code="invalid_field")
        if self._router.owns(conversation_id):
            self._owner_api.checked_seq(conversation_id, session.user_id, seq)

    def acknowledge(self, session: Session, conversation_id: int, seq: int,
                    acked: dict[int, int], shares_read: bool,
                    follows: bool) -> list[tuple[int, int, int]]:
        """A device has everything up to `seq`: move its cursor (where its next catch-up
        starts) and the user's delivered watermark. `acked` is the device's cursor map,
        kept current here, so a repeated ack costs a lookup. `follows`: whether the
        device's session delivers this conversation (the owner listed it, or sent it a
        message): only then is a cursor kept, so acks for conversations made up, or not
        the user's, leave nothing (the owner refuses their watermark move too, and a
        catch-up never starts before the user joined, whatever the cursor says).
        Returns the cursor hint (device, conversation, seq) for the device's home when
        that is another shard ([] otherwise); the caller sends a read's hints together.

        Both are hints (docs/architecture.md, "Delivery hints"): losing one in a crash
        means the device is sent those messages again and drops them by seq, and its
        next ack moves the watermark again. So an ack never waits for, or causes, an
        fsync: it changes memory now, and its rows ride in the next batch."""
        if acked.get(conversation_id, -1) >= seq:
            return []
        self._router.post(ops.Acknowledge(conversation_id, session.user_id, seq, shares_read))
        if not follows:
            return []
        acked[conversation_id] = seq
        if self._router.is_local(self._router.home_of_user(session.user_id)):
            self.hint_cursor(session.device_id, conversation_id, seq)
            return []
        return [(session.device_id, conversation_id, seq)]

    def hint_cursor(self, device_id: int, conversation_id: int, seq: int) -> None:
        """Record a device's ack here, its home (from this shard's sockets or a peer's)."""
        key = (device_id, conversation_id)
        if self._cursor_hints.get(key, -1) < seq:
            self._cursor_hints[key] = seq
            self._hints_waiting.set()
        for listener in self.ack_listeners:
            listener(device_id, conversation_id, seq)

    def drain_hints_into(self, batch: Batch) -> None:
        """Put the acks' cursor rows (and the owner's hinted watermarks) in `batch`."""
        cursors, self._cursor_hints = self._cursor_hints, {}
        for key, seq in cursors.items():
            batch.put(records.CURSORS, key, seq)
        self._owner.drain_hints_into(batch)

    def forget_device(self, user_id: int, device_id: int) -> None:
        """A revoked device's cursors are deleted; its pending hints must not return them."""
        for key in [key for key in self._cursor_hints if key[0] == device_id]:
            del self._cursor_hints[key]

    async def run_hint_writer(self, interval: float = 0.5) -> None:
        """Hints ride in the next batch; when no batch comes for `interval` seconds, one
        unsynced batch of their own carries them. An idle server is not woken for it:
        the writer sleeps until an ack leaves a hint."""
        while True:
            await self._hints_waiting.wait()
            await trio.sleep(interval)
            self._hints_waiting = trio.Event()
            if self._cursor_hints or self._owner.has_hints():
                with contextlib.suppress(ChatdError):  # shutting down: the drain takes them
                    self._commands.enqueue(_nothing, durable=False)

    def wake_hint_writer(self) -> None:
        """The owner took a hinted watermark (a peer's ack)."""
        self._hints_waiting.set()

    async def typing(self, session: Session, conversation_id: int) -> bool:
        """Relay a typing notice to the other members; False when rate limited (dropped).
        Limited here as well as at the owner: a client flooding typing frames must not
        turn each into a mesh request (the owner's limit stays the authority, since one
        user may type through several shards)."""
        key = f"{session.user_id}:{conversation_id}"
        if self._typing_limit.try_acquire(key, trio.current_time()) > 0:
            return False
        relayed: bool = await self._router.ask(ops.Typing(conversation_id, session.user_id))
        return relayed

    async def message_status(self, session: Session, conversation_id: int,
                             seq: int) -> list[tuple[int, bool, bool | None]]:
        """(member, delivered, read) for one message, derived from the watermarks; `read`
        is None where read receipts are not shared (the member's or the caller's choice)."""
        rows: list[tuple[int, int, int]] = await self._router.ask(
            ops.Status(conversation_id, session.user_id, seq))
        shares = await self._read_settings([session.user_id, *(row[0] for row in rows)])
        caller_sees_reads = shares.get(session.user_id, True)
        return [(user_id, delivered >= seq,
                 read >= seq if user_id == session.user_id
                 or (caller_sees_reads and shares.get(user_id, True)) else None)
                for user_id, delivered, read in rows]
