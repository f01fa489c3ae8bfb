"""Reactions, edits and pins: the client's side (check what needs no conversation, then
route the owner command, here or across the mesh). The rules are checked on the owner
(services/reactions.py, edits.py, pins.py).

Each is a log entry fanned out to every member, as a message is, so each takes one from
the `messages` rate-limit bucket (an edit its bytes from `message_bytes` too): a client
cannot flood a group with reactions where it could not with messages."""

from __future__ import annotations

from chatd.config import LimitsConfig
from chatd.domain.content_filter import ContentFilter
from chatd.domain.models import Session
from chatd.domain.reactions import check_emoji
from chatd.errors import BadRequest, Forbidden, PayloadTooLarge, RateLimited
from chatd.pending import Pending
from chatd.protocol import owner as ops
from chatd.services.ratelimits import RateLimits
from chatd.services.routing import Router

Summary = dict[str, tuple[int, bool]]


def _check_seq(seq: int) -> None:
    if seq < 0:
        raise BadRequest("seq: must not be negative", code="invalid_field")


class RichMessaging:
    def __init__(self, *, router: Router, limits: LimitsConfig,
                 ratelimits: RateLimits) -> None:
        self._router = router
        self._limits = limits
        self._ratelimits = ratelimits
        #: Sees the text of edits as it sees sends' (None: no filter).
        self.content_filter: ContentFilter | None = None

    def start_react(self, session: Session, conversation_id: int, seq: int,
                    emoji: str, *, remove: bool = False,
                    address: str | None = None) -> Pending[Summary]:
        """Set the caller's reaction, or remove it (only if it is `emoji`; any with "");
        the answer is the message's reactions once the change is durable. `address`:
        the client's (rate limits)."""
        _check_seq(seq)
        if emoji or not remove:
            check_emoji(emoji)
        self._ratelimits.take("messages", account=session.user_id, address=address)
        return self._router.submit(ops.React(conversation_id, session.user_id,
                                             session.device_id, seq, emoji, remove))

    async def react(self, session: Session, conversation_id: int, seq: int,
                    emoji: str, *, remove: bool = False,
                    address: str | None = None) -> Summary:
        return await self.start_react(session, conversation_id, seq, emoji,
                                      remove=remove, address=address).wait()

    async def edit(self, session: Session, conversation_id: int, seq: int,
                   body: str | bytes, *, address: str | None = None) -> tuple[int, int]:
        """(seq of the edit entry, its ts) once durable."""
        _check_seq(seq)
        # (Its size is checked on the owner, which knows whether it is text or base64.)
        if len(body) > 2 * self._limits.max_message_bytes:
            raise PayloadTooLarge(f"body: the limit is {self._limits.max_message_bytes} "
                                  "bytes", code="body_too_large")
        if self.content_filter is not None and isinstance(body, str):
            verdict = self.content_filter.check(conversation_id, session.user_id,
                                                "text/plain", body)
            if not verdict.allowed:
                raise Forbidden(f"this edit was not made: {verdict.reason}",
                                code="content_blocked")
        self._ratelimits.take("messages", account=session.user_id, address=address)
        try:
            self._ratelimits.take("message_bytes", account=session.user_id,
                                  address=address, cost=len(body))
        except RateLimited:
            self._ratelimits.refund("messages", account=session.user_id, address=address)
            raise
        result: tuple[int, int] = await self._router.ask(ops.Edit(
            conversation_id, session.user_id, session.device_id, seq, body))
        return result

    async def edits(self, session: Session, conversation_id: int,
                    seq: int) -> list[tuple[int, object, int]]:
        _check_seq(seq)
        rows: list[tuple[int, object, int]] = await self._router.ask(
            ops.EditHistory(conversation_id, session.user_id, seq))
        return rows

    async def pin(self, session: Session, conversation_id: int, seq: int,
                  pinned: bool, *, address: str | None = None) -> None:
        _check_seq(seq)
        self._ratelimits.take("messages", account=session.user_id, address=address)
        await self._router.ask(ops.Pin(conversation_id, session.user_id, session.device_id,
                                       seq, pinned))
