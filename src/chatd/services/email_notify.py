"""Email notifications: settings, verification, the digest schedule and the digests.

Everything about a user's email lives on their **home** shard, as the rest of their
account: the settings (`email_settings`), the schedule of their next digest
(`email_digests`), and the notifier that sends it. Other shards reach it with `home.*`
mesh requests (`requests`), through `Users.ask_home`.

How the home learns of unread messages: an owner publishes every durable message to its
recipients' homes ("Delivery and the connection directory"), so the home sees each
message for its users without a new hop. `message_arrived` (a `Delivery` listener) only
notes that a digest is due: the first message of a period sets `due = now + delay`
(persisted, one write per user per period, not per message); later ones change nothing.
What is unread is decided when the digest is due, by the owners, from the read
watermarks and the unread index (`Conversation.unread`): a user who read in the meantime,
on any device, gets nothing. One digest per user per period: the next is due no sooner
than `delay_s` after the last, and lists a conversation again only for messages after
the ones it covered.

A due time is durable, so a pending digest survives a restart; the send is retried with
backoff while the SMTP server fails, without holding up other users' digests (each runs
in its own task, at most `email.max_connections` SMTP conversations at once).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

import trio

from chatd.config import EmailConfig
from chatd.domain import email_links, email_messages
from chatd.domain.email_messages import DigestItem, Envelope
from chatd.domain.email_settings import (
    MAX_DELAY_S,
    MIN_DELAY_S,
    DigestState,
    EmailSettings,
    next_due,
    retry_after_ms,
    valid_address,
)
from chatd.domain.models import Conversation, HistoryPage, Message, Session
from chatd.errors import BadRequest, ChatdError, Conflict, NotFound
from chatd.protocol import owner as ops
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.peer_bodies import int_field as _id
from chatd.services.routing import Router
from chatd.services.smtp import MailError, MailSender
from chatd.services.users import Users
from chatd.storage import Batch, Store, records

log = logging.getLogger(__name__)

#: Newest entries read for a preview (the newest unread text among them is shown).
PREVIEW_LOOKBACK = 5
#: Seconds between two verification mails to one user (a repeated PATCH resends).
RESEND_AFTER_MS = 60_000

#: The conversations of a user with their unread counts, from every owner
#: (MessagingService.conversations_of).
ConversationsOf = Callable[[Session], Awaitable[list[Conversation]]]


class EmailNotifier:
    def __init__(self, *, config: EmailConfig, store: Store, commands: Commands,
                 clock: Clock, router: Router, users: Users,
                 secret: bytes,
                 conversations_of: ConversationsOf, sender: MailSender | None) -> None:
        self._config = config
        self._store = store
        self._commands = commands
        self._clock = clock
        self._router = router
        self._users = users
        self._secret = secret
        self._conversations_of = conversations_of
        #: None when email is off (no `email.host`).
        self.sender = sender
        self._settings: dict[int, EmailSettings] = {}
        self._states: dict[int, DigestState] = {}
        self._heap: list[tuple[int, int]] = []
        self._running: set[int] = set()
        #: Users a message reached while their digest was being made: due again after.
        self._again: set[int] = set()
        #: user -> (the address last sent a verification mail, when): resends throttled.
        self._verify_sent: dict[int, tuple[str, int]] = {}
        #: Verification mails waiting for the loop to send them.
        self._outbox: list[EmailMessage] = []
        self._wake = trio.Event()
        #: The user's notification preferences (services/notify_prefs.py, set by
        #: services/context.py): whether they muted a conversation now, whether they allow
        #: message text in notifications. Until set, nothing is muted, no previews.
        self.muted: Callable[[int, int], bool] = lambda _user, _conversation: False
        self.previews: Callable[[int], bool] = lambda _user: False
        #: Conversations whose messages mentioned the user since their last digest: a
        #: mention is mailed even from a muted conversation (kept in memory only: after a
        #: restart a muted conversation's mention waits for an unmuted message).
        self._mentioned: dict[int, set[int]] = {}
        #: Seam for end-to-end encrypted conversations (branch `e2e-relay` adds the
        #: flag): no preview from one, whatever the user allows.
        self.encrypted: Callable[[Conversation], bool] = \
            lambda conv: bool(getattr(conv, "encrypted", False))
        #: Digests sent, skipped (nothing unread any more) and failed, for /metrics.
        self.counts = {"sent": 0, "skipped": 0, "failed": 0, "verifications": 0}
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "home.email_settings": self._settings_request,
            "home.email_update": self._update_request,
            "home.email_verify": self._verify_request,
            "home.email_unsubscribe": self._unsubscribe_request,
        }
        self._load()

    @property
    def enabled(self) -> bool:
        return self.sender is not None

    def prometheus(self) -> list[str]:
        """/metrics: digests sent, skipped (read meanwhile), failed sends, verification
        mails sent; digests due now."""
        lines = ["# TYPE chatd_email_total counter"]
        lines += [f'chatd_email_total{{outcome="{outcome}"}} {count}'
                  for outcome, count in self.counts.items()]
        lines += ["# TYPE chatd_email_digests_pending gauge",
                  f"chatd_email_digests_pending "
                  f"{sum(1 for state in self._states.values() if state.due_ms)}"]
        return lines

    # -- state ------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Settings and schedules of users homed here (few: only those who set an
        address), so the per-message check is a dict lookup."""
        for user_id, value in self._store.scan(records.EMAIL_SETTINGS, b""):
            self._settings[user_id] = _settings_from(value)
        for user_id, value in self._store.scan(records.EMAIL_DIGESTS, b""):
            state = _state_from(value)
            self._states[user_id] = state
            if state.due_ms:
                heapq.heappush(self._heap, (state.due_ms, user_id))

    def forget_pending(self) -> None:
        """After a failed batch: what is in memory may be ahead of disk; read it again."""
        self._settings.clear()
        self._states.clear()
        self._heap.clear()
        self._load()

    def settings_of(self, user_id: int) -> EmailSettings:
        return self._settings.get(user_id, EmailSettings())

    def state_of(self, user_id: int) -> DigestState:
        return self._states.get(user_id) or DigestState()

    def _put_settings(self, batch: Batch, user_id: int, settings: EmailSettings) -> None:
        batch.put(records.EMAIL_SETTINGS, user_id, _settings_to(settings))
        self._settings[user_id] = settings

    def _put_state(self, batch: Batch, user_id: int, state: DigestState) -> None:
        if not state.due_ms and not state.mailed and not state.last_sent_ms:
            batch.delete(records.EMAIL_DIGESTS, user_id)
            self._states.pop(user_id, None)
            return
        batch.put(records.EMAIL_DIGESTS, user_id, _state_to(state))
        self._states[user_id] = state

    async def erase(self, user_id: int) -> None:
        """An erase hook (services/account_admin.py): the address and the schedule go."""
        def apply(batch: Batch) -> None:
            batch.delete(records.EMAIL_SETTINGS, user_id)
            batch.delete(records.EMAIL_DIGESTS, user_id)
            self._settings.pop(user_id, None)
            self._states.pop(user_id, None)

        await self._commands.submit(apply)

    # -- the client's side (any shard): routed to the user's home ----------------------------------

    async def get(self, user_id: int) -> dict[str, Any]:
        return await self._users.ask_home(user_id, "home.email_settings",  # type: ignore[no-any-return]
                                          {"user_id": user_id}, self._settings_request)

    async def update(self, user_id: int, *, email: str | None, enabled: bool | None,
                     delay_s: int | None) -> dict[str, Any]:
        return await self._users.ask_home(user_id, "home.email_update", {  # type: ignore[no-any-return]
            "user_id": user_id, "email": email, "enabled": enabled, "delay_s": delay_s},
            self._update_request)

    async def verify(self, token: str) -> None:
        parsed = _parse(token)
        await self._users.ask_home(parsed.user_id, "home.email_verify", {"token": token},
                                   self._verify_request)

    async def unsubscribe(self, token: str) -> None:
        parsed = _parse(token)
        await self._users.ask_home(parsed.user_id, "home.email_unsubscribe",
                                   {"token": token}, self._unsubscribe_request)

    # -- the home's answers ----------------------------------------------------------------------

    def _settings_request(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._view(self.settings_of(_id(body, "user_id")))

    def _view(self, settings: EmailSettings) -> dict[str, Any]:
        return {"email": settings.address or None, "pending_email": settings.pending or None,
                "email_enabled": settings.enabled, "email_delay_s": settings.delay_s,
                "available": self.enabled}

    async def _update_request(self, body: dict[str, Any]) -> dict[str, Any]:
        user_id = _id(body, "user_id")
        email = _optional(body, "email", str)
        enabled = _optional(body, "enabled", bool)
        delay_s = _optional(body, "delay_s", int)
        if email is not None and email and not valid_address(email):
            raise BadRequest("email: not an address this server sends to (ASCII, "
                             "name@host.domain)", code="invalid_field")
        if delay_s is not None and not MIN_DELAY_S <= delay_s <= MAX_DELAY_S:
            raise BadRequest(f"email_delay_s: must be within {MIN_DELAY_S}..{MAX_DELAY_S}",
                             code="invalid_field")
        if email and not self.enabled:
            raise Conflict("this server sends no email (its operator set no SMTP server)",
                           code="email_unavailable")
        verify_to: str | None = None

        def apply(batch: Batch) -> EmailSettings:
            nonlocal verify_to
            current = self.settings_of(user_id)
            changed = current
            if email is not None:
                if not email:
                    # No address: nothing can be sent; the schedule goes too.
                    changed = replace(changed, address="", pending="", enabled=False)
                elif email.lower() == current.address.lower():
                    changed = replace(changed, pending="")
                else:
                    changed = replace(changed, pending=email)
                    verify_to = email
            if enabled is not None:
                changed = replace(changed, enabled=enabled)
            if delay_s is not None:
                changed = replace(changed, delay_s=delay_s)
            if changed != current:
                self._put_settings(batch, user_id, changed)
            if not changed.active and user_id in self._states:
                self._put_state(batch, user_id, DigestState())
            return changed

        settings = await self._commands.submit(apply)
        if verify_to is not None:
            self._send_verification(user_id, verify_to)
        return self._view(settings)

    def _send_verification(self, user_id: int, address: str) -> None:
        """Send the verification mail in the background (the PATCH does not wait for
        SMTP); the same address at most once per `RESEND_AFTER_MS` (another address at
        once: a typo fixed; the `email_verify` bucket bounds how many)."""
        now = self._clock.now_ms()
        last_address, last_at = self._verify_sent.get(user_id, ("", 0))
        if last_address == address.lower() and now - last_at < RESEND_AFTER_MS:
            return
        self._verify_sent[user_id] = (address.lower(), now)
        token = email_links.make(self._secret, "verify", user_id, address, now)
        message = email_messages.verification(
            self._envelope(address), verify_url=self._link("verify", token), now_ms=now)
        self._outbox.append(message)
        self._wake.set()

    async def _verify_request(self, body: dict[str, Any]) -> None:
        token = _parse(_str(body, "token"))

        def apply(batch: Batch) -> None:
            settings = self.settings_of(token.user_id)
            if not settings.pending:
                # Followed twice: the first made it the address.
                if settings.address:
                    _check(self._secret, "verify", token, settings.address,
                           self._clock.now_ms())
                    return
                raise NotFound("no address waits for this link", code="invalid_link")
            _check(self._secret, "verify", token, settings.pending, self._clock.now_ms())
            self._put_settings(batch, token.user_id,
                               replace(settings, address=settings.pending, pending=""))

        await self._commands.submit(apply)

    async def _unsubscribe_request(self, body: dict[str, Any]) -> None:
        token = _parse(_str(body, "token"))

        def apply(batch: Batch) -> None:
            settings = self.settings_of(token.user_id)
            if not settings.address:
                raise NotFound("no address is subscribed by this link", code="invalid_link")
            _check(self._secret, "unsubscribe", token, settings.address,
                   self._clock.now_ms())
            if settings.enabled:
                self._put_settings(batch, token.user_id, replace(settings, enabled=False))
            if token.user_id in self._states:
                self._put_state(batch, token.user_id, DigestState())

        await self._commands.submit(apply)

    def _envelope(self, to: str) -> Envelope:
        return Envelope(self._config.from_address, to, self._config.base_url.rstrip("/"))

    def _link(self, route: str, token: str) -> str:
        return f"{self._config.base_url.rstrip('/')}/email/{route}?token={quote(token)}"

    # -- messages for users homed here -------------------------------------------------------------

    def message_arrived(self, users: list[int], get_message: Callable[[], Message]) -> None:
        """A durable message reached this home for `users` (a `Delivery` listener): the
        first one of a period makes the user's digest due. The message is decoded only
        when one of them gets digests."""
        settings = self._settings
        if not any(user_id in settings and settings[user_id].active for user_id in users):
            return
        message = get_message()
        if message.content_type.startswith("chatd/"):
            return  # system entries, reactions, edits, pins, tombstones: never mailed
        conversation_id = message.conversation_id
        for user_id in users:
            if user_id == message.sender_id:
                continue
            user_settings = settings.get(user_id)
            if user_settings is None or not user_settings.active:
                continue
            if user_id in message.mentions:
                self._mentioned.setdefault(user_id, set()).add(conversation_id)
            elif self.muted(user_id, conversation_id):
                continue
            if user_id in self._running:
                self._again.add(user_id)
                continue
            state = self._states.get(user_id)
            if state is not None and state.due_ms:
                continue
            self._schedule(user_id, user_settings)

    def _schedule(self, user_id: int, settings: EmailSettings) -> None:
        state = replace(self.state_of(user_id))
        state.due_ms = next_due(state, self._clock.now_ms(), settings.delay_s)
        # In memory at once, so the next message sees it; on disk with the next batch
        # (not awaited: the delivery path does not wait for it).
        self._states[user_id] = state
        heapq.heappush(self._heap, (state.due_ms, user_id))

        def apply(batch: Batch) -> None:
            current = self._states.get(user_id)
            if current is not None:
                self._put_state(batch, user_id, current)

        self._commands.enqueue(apply)

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Send what is due, every `email.check_interval` seconds (the clock may be a
        test's), each digest in its own task."""
        async with trio.open_nursery() as nursery:
            while True:
                self._send_outbox(nursery)
                self._start_due(nursery)
                with trio.move_on_after(self._config.check_interval):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _send_outbox(self, nursery: trio.Nursery) -> None:
        while self._outbox:
            nursery.start_soon(self._send_verification_now, self._outbox.pop(0))

    async def _send_verification_now(self, message: EmailMessage) -> None:
        assert self.sender is not None
        try:
            await self.sender.send(message)
            self.counts["verifications"] += 1
        except MailError as exc:
            # The user asks again (PATCH with the same address); no address in the log.
            log.warning("a verification mail was not sent: %s", exc)

    def _start_due(self, nursery: trio.Nursery) -> None:
        now = self._clock.now_ms()
        while self._heap and self._heap[0][0] <= now:
            due, user_id = heapq.heappop(self._heap)
            state = self._states.get(user_id)
            if state is None or state.due_ms != due or user_id in self._running:
                continue  # a stale heap entry (rescheduled, cancelled or running)
            self._running.add(user_id)
            nursery.start_soon(self._digest_task, user_id)

    async def _digest_task(self, user_id: int) -> None:
        try:
            await self.send_digest(user_id)
        except Exception:  # one user's digest must not end the loop
            log.exception("the email digest of user %d failed", user_id)
            self._retry_later(user_id)
        finally:
            self._running.discard(user_id)
        if user_id in self._again:
            self._again.discard(user_id)
            settings = self._settings.get(user_id)
            state = self._states.get(user_id)
            if settings is not None and settings.active and (state is None or not state.due_ms):
                self._schedule(user_id, settings)

    def _retry_later(self, user_id: int) -> None:
        state = replace(self.state_of(user_id))
        state.failures += 1
        state.due_ms = self._clock.now_ms() + retry_after_ms(state.failures)
        self._states[user_id] = state
        heapq.heappush(self._heap, (state.due_ms, user_id))

        def apply(batch: Batch) -> None:
            current = self._states.get(user_id)
            if current is not None:
                self._put_state(batch, user_id, current)

        self._commands.enqueue(apply)

    async def send_digest(self, user_id: int) -> None:
        """Gather what `user_id` has unread, mail it if anything is new, and record it."""
        settings = self.settings_of(user_id)
        state = self.state_of(user_id)
        if not settings.active or self.sender is None:
            await self._commands.submit(lambda batch: self._put_state(batch, user_id,
                                                                      DigestState()))
            return
        conversations = await self._conversations_of(Session(user_id, 0, b"", 0))
        unread = [(conv, conv.unread(user_id)) for conv in conversations]
        mentioned = self._mentioned.get(user_id, set())
        unread = [(conv, count) for conv, count in unread
                  if count > 0 and (conv.conversation_id in mentioned
                                    or not self.muted(user_id, conv.conversation_id))]
        fresh = [(conv, count) for conv, count in unread
                 if conv.head_seq > state.mailed.get(conv.conversation_id, 0)]
        # What is still unread keeps its mark; what was read since is forgotten.
        mailed = {conv.conversation_id: state.mailed[conv.conversation_id]
                  for conv, _ in unread if conv.conversation_id in state.mailed}
        now = self._clock.now_ms()
        if not fresh:
            self.counts["skipped"] += 1
            done = DigestState(0, state.last_sent_ms, mailed, 0)
            await self._commands.submit(lambda batch: self._put_state(batch, user_id, done))
            return
        items = [await self._item(user_id, conv, count, settings) for conv, count in fresh]
        token = email_links.make(self._secret, "unsubscribe", user_id, settings.address, now)
        message = email_messages.digest(self._envelope(settings.address), items,
                                        unsubscribe_url=self._link("unsubscribe", token),
                                        now_ms=now)
        try:
            await self.sender.send(message)
        except MailError as exc:
            self.counts["failed"] += 1
            log.warning("the email digest of user %d was not sent (retried later): %s",
                        user_id, exc)
            self._retry_later(user_id)
            return
        self.counts["sent"] += 1
        self._mentioned.pop(user_id, None)
        mailed.update((conv.conversation_id, conv.head_seq) for conv, _ in fresh)
        sent = DigestState(0, now, mailed, 0)
        await self._commands.submit(lambda batch: self._put_state(batch, user_id, sent))

    async def _item(self, user_id: int, conv: Conversation, count: int,
                    settings: EmailSettings) -> DigestItem:
        is_group = conv.kind == "group"
        title = conv.name
        if not is_group:
            others = [member for member in conv.members if member != user_id]
            title = await self._display_name(others[0]) if others else "yourself"
        preview = sender_name = None
        if self.previews(user_id) and not self.encrypted(conv):
            found = await self._newest_unread_text(user_id, conv)
            if found is not None:
                preview = found.body if isinstance(found.body, str) else None
                sender_name = await self._display_name(found.sender_id) if is_group else None
        return DigestItem(title, is_group, count, preview, sender_name)

    async def _newest_unread_text(self, user_id: int, conv: Conversation) -> Message | None:
        """The newest unread text message from someone else, if among the last few
        entries (no preview otherwise: a digest reads a page, not a history)."""
        try:
            page: HistoryPage = await self._router.ask(ops.History(
                conv.conversation_id, user_id, -1, -1, PREVIEW_LOOKBACK,
                0 if self._router.owns(conv.conversation_id) else 64 * 1024))
        except ChatdError:
            return None
        read = conv.watermark(user_id).read_seq
        for message in reversed(page.messages):
            if message.seq > read and message.sender_id != user_id \
                    and message.content_type.startswith("text/") \
                    and isinstance(message.body, str):
                return message
        return None

    async def _display_name(self, user_id: int) -> str:
        try:
            return (await self._users.get_user(user_id)).display_name
        except ChatdError:
            return "someone"


def _parse(token: str) -> email_links.LinkToken:
    try:
        return email_links.parse(token)
    except email_links.BadToken as exc:
        raise BadRequest(str(exc), code="invalid_link") from None


def _check(secret: bytes, purpose: email_links.Purpose, token: email_links.LinkToken,
           address: str, now_ms: int) -> None:
    try:
        email_links.check(secret, purpose, token, address, now_ms)
    except email_links.BadToken as exc:
        raise NotFound(str(exc), code="invalid_link") from None


def _str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise BadRequest(f"{name}: expected a string", code="malformed_command")
    return value


def _optional(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{name}: expected {kind.__name__}", code="malformed_command")
    return value


def _settings_to(settings: EmailSettings) -> dict[str, Any]:
    return {"address": settings.address, "pending": settings.pending,
            "enabled": settings.enabled, "delay_s": settings.delay_s}


def _settings_from(value: Any) -> EmailSettings:
    value = value if isinstance(value, dict) else {}
    default = EmailSettings()
    return EmailSettings(str(value.get("address", "")), str(value.get("pending", "")),
                         bool(value.get("enabled", False)),
                         int(value.get("delay_s", default.delay_s)))


def _state_to(state: DigestState) -> dict[str, Any]:
    return {"due": state.due_ms, "last_sent": state.last_sent_ms,
            "mailed": [[conversation, seq] for conversation, seq in state.mailed.items()],
            "failures": state.failures}


def _state_from(value: Any) -> DigestState:
    value = value if isinstance(value, dict) else {}
    return DigestState(int(value.get("due", 0)), int(value.get("last_sent", 0)),
                       {int(c): int(s) for c, s in value.get("mailed", [])},
                       int(value.get("failures", 0)))
