"""Routes: /messages."""

from __future__ import annotations

from quart import request
from quart_trio import QuartTrio

from chatd.domain import rules
from chatd.errors import BadRequest
from chatd.services.context import Services
from chatd.web import params, render
from chatd.web.auth import authenticate
from chatd.web.routes_accounts import Reply


def register(app: QuartTrio, services: Services) -> None:
    accounts = services.accounts
    messaging = services.messaging

    @app.post("/messages/send")
    async def send() -> Reply:
        session = authenticate(request, accounts)
        body = await params.json_object(request)
        content_type = rules.check_content_type(params.text(body, "content_type"))
        result = await messaging.send(
            session,
            conversation_id=params.identifier(body, "conversation_id"),
            client_msg_id=params.text(body, "client_msg_id"),
            content_type=content_type,
            body=params.message_body(body, content_type,
                                     is_text=rules.is_text_content(content_type)),
        )
        return render.send_result(result), 201

    @app.get("/messages/<conversation_id>/<seq>/status")
    async def message_status(conversation_id: str, seq: str) -> Reply:
        session = authenticate(request, accounts)
        if not (seq.isascii() and seq.isdigit()) or len(seq) > 19:
            raise BadRequest("seq: expected a whole number", code="invalid_field")
        status = messaging.message_status(
            session, params.path_id(conversation_id, "conversation_id"), int(seq))
        return {"conversation_id": conversation_id, "seq": int(seq),
                "members": [{"user_id": str(user_id), "delivered": delivered, "read": read}
                            for user_id, delivered, read in status]}

    @app.get("/messages/<conversation_id>")
    async def history(conversation_id: str) -> Reply:
        session = authenticate(request, accounts)
        page = messaging.history(
            session, params.path_id(conversation_id, "conversation_id"),
            after=params.query_int(request, "after"),
            before=params.query_int(request, "before"),
            limit=params.query_int(request, "limit"),
        )
        return {"messages": [render.message(message) for message in page.messages],
                "has_more": page.has_more}
