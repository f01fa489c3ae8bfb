"""Routes: /messages."""

from __future__ import annotations

import base64

from quart import request

from chatd.domain import rules
from chatd.domain.media import Attaching
from chatd.domain.models import Session
from chatd.services.context import Services
from chatd.web import models, render
from chatd.web.api import Api
from chatd.web.client_address import client_address
from chatd.web.render import NO_CONTENT, Reply


def register(api: Api, services: Services) -> None:
    messaging = services.messaging

    @api.route("POST", "/messages/send",
               summary="Append a message; answered once durable. Idempotent per client_msg_id.",
               body=models.SendMessage, status=201, response=models.SendResult,
               errors=(403, 404, 409, 429))
    async def send(session: Session, body: models.SendMessage) -> Reply:
        # Only a send that names versions pays for the check (docs/architecture.md, E2E).
        await services.keys.check_device_lists(body.device_list_version)
        text = rules.is_text_content(body.content_type)
        # The model checked the base64 (with its padding) already.
        payload = body.body if text else base64.b64decode(body.body)
        result = await messaging.send(
            session, conversation_id=body.conversation_id, client_msg_id=body.client_msg_id,
            content_type=body.content_type, body=payload,
            attachments=tuple(Attaching(item.media_id, item.thumbnail_media_id or 0)
                              for item in body.attachments or ()),
            reply_to=body.reply_to or 0, mentions=body.mentions,
            address=client_address(request, services.proxies))
        return render.send_result(result), 201

    @api.route("POST", "/messages/forward",
               summary="Copy a message you can read into conversations you are in",
               description=(
                   "Up to 5 targets (400 invalid_field past that; one at a time, 400 "
                   "forward_limited, for a message forwarded many times). The source must "
                   "be readable by you (404 unknown_message otherwise, as for a deleted "
                   "one; 409 not_forwardable for the server's own entries and for "
                   "reactions, edits and pins). An edited message is copied as it reads "
                   "now. Each copy is "
                   "a send into its target, answered per target in the order given: a "
                   "`seq` or an `error` (a target you are not in: unknown_conversation). "
                   "Copies keep the content type, body and attachments (by reference) and "
                   "carry `forwarded: true`, `forwarded_many: true` from the fifth hop."),
               body=models.Forward, response=models.Forwarded, errors=(404, 409))
    async def forward(session: Session, body: models.Forward) -> Reply:
        outcomes = await services.forwarding.forward(
            session, conversation_id=body.from_.conversation_id, seq=body.from_.seq,
            targets=body.to, client_msg_id=body.client_msg_id,
            address=client_address(request, services.proxies))
        return render.forwarded(outcomes)

    @api.route("GET", "/messages/{conversation_id}/{seq}/status",
               summary="Delivered and read, per member, for one message (from the watermarks)",
               response=models.MessageStatus)
    async def message_status(session: Session, conversation_id: int, seq: int) -> Reply:
        status = await messaging.message_status(session, conversation_id, seq)
        return render.message_status(conversation_id, seq, status)

    @api.route("POST", "/messages/{conversation_id}/{seq}/delete",
               summary="Delete a message for everyone (a tombstone stays at its seq) or "
                       "for yourself",
               description=(
                   "`for: everyone`: its sender may within limits.delete_window_s of "
                   "sending, a group admin at any time, anyone else gets 403 (not_sender, "
                   "delete_window_passed). The body and attachments leave storage; members "
                   "get a `message_deleted` frame and a `message_deleted` system entry. "
                   "Entries the server wrote cannot be deleted (409 not_deletable); "
                   "deleting a deleted message again changes nothing. `for: me`: hidden "
                   "from your history and sync, on all your devices (`message_hidden`)."),
               body=models.DeleteMessage, status=204, errors=(403, 404, 409, 429))
    async def delete_message(session: Session, conversation_id: int, seq: int,
                             body: models.DeleteMessage) -> Reply:
        await messaging.delete_message(session, conversation_id, seq,
                                       for_everyone=body.for_ == "everyone",
                                       address=client_address(request, services.proxies))
        return NO_CONTENT

    @api.route("GET", "/messages/{conversation_id}",
               summary="A page of history in ascending seq order", query=models.HistoryQuery,
               response=models.History)
    async def history(session: Session, conversation_id: int,
                      query: models.HistoryQuery) -> Reply:
        return render.history(await messaging.history(
            session, conversation_id, after=query.after, before=query.before,
            limit=query.limit))
