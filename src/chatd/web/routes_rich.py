"""Routes: reactions, edits and pinned messages (docs/api.md, "Reactions, edits and
pins"). Each change is an entry in the conversation's log, made by its owner."""

from __future__ import annotations

from quart import request

from chatd.domain.models import Session
from chatd.services.context import Services
from chatd.web import models, render
from chatd.web.api import Api
from chatd.web.client_address import client_address
from chatd.web.render import NO_CONTENT, Reply


def register(api: Api, services: Services) -> None:
    rich = services.rich

    def address() -> str | None:
        return client_address(request, services.proxies)

    @api.route("POST", "/messages/{conversation_id}/{seq}/reactions",
               summary="React to a message (your one reaction to it: a new one replaces "
                       "the old)",
               description=(
                   "Appends a `chatd/reaction` entry when your reaction changes. Answers "
                   "the message's reactions. 400 invalid_emoji unless `emoji` is exactly "
                   "one emoji; 409 not_reactable for a deleted message or an entry the "
                   "server wrote."),
               body=models.React, response=models.ReactionSummary, errors=(403, 409, 429))
    async def react(session: Session, conversation_id: int, seq: int,
                    body: models.React) -> Reply:
        summary = await rich.react(session, conversation_id, seq, body.emoji,
                                   address=address())
        return render.reaction_summary(conversation_id, seq, summary)

    @api.route("DELETE", "/messages/{conversation_id}/{seq}/reactions/{emoji}",
               summary="Take back your reaction (the emoji URL-encoded); nothing happens "
                       "when your reaction is another one, or none",
               status=204, errors=(403, 429))
    async def unreact(session: Session, conversation_id: int, seq: int, emoji: str) -> Reply:
        await rich.react(session, conversation_id, seq, emoji, remove=True,
                         address=address())
        return NO_CONTENT

    @api.route("POST", "/messages/{conversation_id}/{seq}/edit",
               summary="Edit a message you sent (within limits.edit_window_s)",
               description=(
                   "Appends a `chatd/edit` entry pointing at the message; history shows the "
                   "latest body with `edited_at`. Text messages take text; an opaque "
                   "message without media (an end-to-end encrypted text) takes its new "
                   "bytes as base64, and the server checks only the sender and the window. "
                   "403 not_sender, edit_window_passed; 409 not_editable (deleted, media, "
                   "or an entry the server wrote)."),
               body=models.EditMessage, response=models.Edited, errors=(403, 409, 429))
    async def edit(session: Session, conversation_id: int, seq: int,
                   body: models.EditMessage) -> Reply:
        edit_seq, edited_at = await rich.edit(session, conversation_id, seq, body.body,
                                               address=address())
        return render.edited(edit_seq, edited_at)

    @api.route("GET", "/messages/{conversation_id}/{seq}/edits",
               summary="A message's bodies, oldest first (the original first)",
               response=models.EditHistory)
    async def edits(session: Session, conversation_id: int, seq: int) -> Reply:
        return render.edit_history(await rich.edits(session, conversation_id, seq))

    @api.route("POST", "/conversations/{conversation_id}/pins/{seq}",
               summary="Pin a message (a group's admins, either member of a direct chat; "
                       "at most 3)",
               description="Appends a `chatd/pin` entry; conversation views list `pins`. "
                           "403 not_an_admin; 409 too_many_pins, not_pinnable.",
               status=204, errors=(403, 409, 429))
    async def pin(session: Session, conversation_id: int, seq: int) -> Reply:
        await rich.pin(session, conversation_id, seq, True, address=address())
        return NO_CONTENT

    @api.route("DELETE", "/conversations/{conversation_id}/pins/{seq}",
               summary="Unpin a message (nothing happens when it is not pinned)",
               status=204, errors=(403, 429))
    async def unpin(session: Session, conversation_id: int, seq: int) -> Reply:
        await rich.pin(session, conversation_id, seq, False, address=address())
        return NO_CONTENT
