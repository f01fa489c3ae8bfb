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
from chatd.web.render import Reply


def register(api: Api, services: Services) -> None:
    messaging = services.messaging

    @api.route("POST", "/messages/send",
               summary="Append a message; answered once durable. Idempotent per client_msg_id.",
               body=models.SendMessage, status=201, response=models.SendResult,
               errors=(403, 404, 429))
    async def send(session: Session, body: models.SendMessage) -> Reply:
        text = rules.is_text_content(body.content_type)
        # The model checked the base64 (with its padding) already.
        payload = body.body if text else base64.b64decode(body.body)
        result = await messaging.send(
            session, conversation_id=body.conversation_id, client_msg_id=body.client_msg_id,
            content_type=body.content_type, body=payload,
            attachments=tuple(Attaching(item.media_id, item.thumbnail_media_id or 0)
                              for item in body.attachments or ()),
            address=client_address(request, services.proxies))
        return render.send_result(result), 201

    @api.route("GET", "/messages/{conversation_id}/{seq}/status",
               summary="Delivered and read, per member, for one message (from the watermarks)",
               response=models.MessageStatus)
    async def message_status(session: Session, conversation_id: int, seq: int) -> Reply:
        status = await messaging.message_status(session, conversation_id, seq)
        return render.message_status(conversation_id, seq, status)

    @api.route("GET", "/messages/{conversation_id}",
               summary="A page of history in ascending seq order", query=models.HistoryQuery,
               response=models.History)
    async def history(session: Session, conversation_id: int,
                      query: models.HistoryQuery) -> Reply:
        return render.history(await messaging.history(
            session, conversation_id, after=query.after, before=query.before,
            limit=query.limit))
