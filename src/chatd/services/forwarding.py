"""Forwarding: copying a message the caller can read into conversations they are in.

The source is read at its owner exactly as the caller's history shows it (a member, from
their joining on, not hidden by them, not deleted or expired; its latest body if
edited). Each copy is an ordinary send into its target, through the target's owner, so
every rule of a send holds there (membership, message requests and blocks, the content
filter, sizes). A copy keeps the
content type and body, carries the attachments *by reference* (each media's shard counts
the target conversation's reference and the target's owner records its audience, as for
any send: services/media.py) and is one hop further from its original
(domain/replies.py).

Targets have different owners, so the copies cannot land all or nothing: each target is
answered on its own (its send result, or its error), in the order given. The caller's
`client_msg_id` (one is made when none is given) is each copy's, and dedup is per
conversation, so retrying a forward gives the same copies back rather than new ones.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from chatd.domain import deletion, replies, rules
from chatd.domain.media import Attaching
from chatd.domain.models import HistoryPage, Message, SendResult, Session
from chatd.errors import ChatdError
from chatd.protocol import owner as ops
from chatd.services.messaging import MessagingService
from chatd.services.routing import Router


@dataclass(frozen=True, slots=True)
class ForwardOutcome:
    """One target's answer: the copy's send result, or why there is no copy."""

    conversation_id: int
    result: SendResult | None = None
    error: ChatdError | None = None


class Forwarding:
    def __init__(self, *, router: Router, messaging: MessagingService) -> None:
        self._router = router
        self._messaging = messaging

    async def source(self, session: Session, conversation_id: int, seq: int) -> Message:
        """The message at `seq` as the caller reads it (404 alike for a conversation they
        are not in, a seq they cannot read, and a deleted message)."""
        if seq < 1:
            raise deletion.unknown_message(seq)
        page: HistoryPage = await self._router.ask(ops.History(
            conversation_id, session.user_id, seq - 1, seq + 1, 1, 0))
        source = replies.forwardable(page.messages[0] if page.messages else None, seq)
        note = page.annotations.get(seq)
        # An edited message is copied as it reads now (its latest body), as history shows it.
        return source if note is None or note.body is None else replace(source, body=note.body)

    async def forward(self, session: Session, *, conversation_id: int, seq: int,
                      targets: list[int], client_msg_id: str | None,
                      address: str | None = None) -> list[ForwardOutcome]:
        """`address`: the client's, for the rate limits each copy is charged to."""
        source = await self.source(session, conversation_id, seq)
        targets = replies.check_forward_targets(source, targets)
        client_msg_id = rules.check_client_msg_id(
            client_msg_id or f"fwd-{secrets.token_urlsafe(12)}")
        return [await self._copy(session, source, target, client_msg_id, address)
                for target in targets]

    async def _copy(self, session: Session, source: Message, target: int,
                    client_msg_id: str, address: str | None) -> ForwardOutcome:
        try:
            attached = []
            if source.attachments:
                # Membership first: media.attach counts the target's reference, which a
                # copy refused later by its owner would leave behind for nothing.
                await self._router.ask(ops.View(target, session.user_id))
                attached = await self._messaging.attach(session, target, tuple(
                    Attaching(int(item["media_id"]), int(item.get("thumbnail_media_id") or 0))
                    for item in source.attachments))
            body = source.body
            assert isinstance(body, str | bytes)  # (system entries are not forwardable)
            result = await self._messaging.start_send(
                session, conversation_id=target, client_msg_id=client_msg_id,
                content_type=source.content_type, body=body, attachments=attached,
                forwarded=source.forwarded + 1, address=address).wait()
        except ChatdError as exc:
            return ForwardOutcome(target, error=exc)
        return ForwardOutcome(target, result=result)
