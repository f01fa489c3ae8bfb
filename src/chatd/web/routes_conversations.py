"""Routes: /conversations and /groups."""

from __future__ import annotations

from quart import request
from quart_trio import QuartTrio

from chatd.services.context import Services
from chatd.web import params, render
from chatd.web.auth import authenticate
from chatd.web.routes_accounts import Reply


def register(app: QuartTrio, services: Services) -> None:
    accounts = services.accounts
    conversations = services.conversations
    messaging = services.messaging

    @app.post("/conversations/direct")
    async def open_direct() -> Reply:
        session = authenticate(request, accounts)
        body = await params.json_object(request)
        opened = await conversations.open_direct(session, params.identifier(body, "user_id"))
        return render.conversation(opened.conversation, session.user_id), (
            201 if opened.created else 200)

    @app.get("/conversations")
    async def list_conversations() -> Reply:
        session = authenticate(request, accounts)
        return {"conversations": [render.conversation(conv, session.user_id)
                                  for conv in messaging.conversations_of(session)]}

    @app.get("/conversations/<conversation_id>")
    async def get_conversation(conversation_id: str) -> Reply:
        session = authenticate(request, accounts)
        conv = messaging.member_view(session, params.path_id(conversation_id, "conversation_id"))
        return render.conversation(conv, session.user_id)

    @app.post("/conversations/<conversation_id>/read")
    async def mark_read(conversation_id: str) -> Reply:
        session = authenticate(request, accounts)
        body = await params.json_object(request)
        mark = await messaging.mark_read(
            session, params.path_id(conversation_id, "conversation_id"),
            params.integer(body, "seq"))
        return render.watermark(mark)

    @app.post("/groups/create")
    async def create_group() -> Reply:
        session = authenticate(request, accounts)
        body = await params.json_object(request)
        conv = await conversations.create_group(
            session, params.text(body, "name"),
            params.identifiers(body, "members", allow_empty=True))
        return render.conversation(conv, session.user_id), 201

    @app.post("/groups/<conversation_id>/add")
    async def add_members(conversation_id: str) -> Reply:
        session = authenticate(request, accounts)
        body = await params.json_object(request)
        conv = await conversations.add_members(
            session, params.path_id(conversation_id, "conversation_id"),
            params.identifiers(body, "user_ids"))
        return render.conversation(conv, session.user_id)

    @app.post("/groups/<conversation_id>/remove")
    async def remove_members(conversation_id: str) -> Reply:
        session = authenticate(request, accounts)
        body = await params.json_object(request)
        conv = await conversations.remove_members(
            session, params.path_id(conversation_id, "conversation_id"),
            params.identifiers(body, "user_ids"))
        return render.conversation(conv, session.user_id)

    @app.post("/groups/<conversation_id>/admins")
    async def promote(conversation_id: str) -> Reply:
        session = authenticate(request, accounts)
        body = await params.json_object(request)
        conv = await conversations.promote(
            session, params.path_id(conversation_id, "conversation_id"),
            params.identifiers(body, "user_ids"))
        return render.conversation(conv, session.user_id)

    @app.post("/groups/<conversation_id>/leave")
    async def leave(conversation_id: str) -> Reply:
        session = authenticate(request, accounts)
        await conversations.leave(session, params.path_id(conversation_id, "conversation_id"))
        return "", 204

    @app.patch("/groups/<conversation_id>")
    async def rename(conversation_id: str) -> Reply:
        session = authenticate(request, accounts)
        body = await params.json_object(request)
        conv = await conversations.rename(
            session, params.path_id(conversation_id, "conversation_id"), params.text(body, "name"))
        return render.conversation(conv, session.user_id)
