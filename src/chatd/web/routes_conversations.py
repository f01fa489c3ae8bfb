"""Routes: /conversations and /groups."""

from __future__ import annotations

import trio
from quart import request

from chatd.domain.models import Conversation, Session
from chatd.services.context import Services
from chatd.web import models, render
from chatd.web.api import Api
from chatd.web.client_address import client_address
from chatd.web.render import NO_CONTENT, Reply

#: What the group-changing routes may refuse: not an admin, no such member or group, full.
_GROUP_ERRORS = (403, 404, 409)


def register(api: Api, services: Services) -> None:
    conversations = services.conversations
    messaging = services.messaging

    @api.route("POST", "/conversations/direct",
               summary="Open (or get) the 1:1 conversation with a user; 201 when created",
               body=models.OpenDirect, response=models.Conversation,
               also={201: models.Conversation}, errors=(403, 404, 409, 429))
    async def open_direct(session: Session, body: models.OpenDirect) -> Reply:
        address = client_address(request, services.proxies)
        with services.ratelimits.charging_unknown_users(account=session.user_id,
                                                        address=address):
            opened = await conversations.open_direct(session, body.user_id, address,
                                                     body.encrypted)
        return render.conversation(opened.conversation, session.user_id), (
            201 if opened.created else 200)

    @api.route("GET", "/conversations", summary="Your conversations, most recent first "
               "(?requests=1: the message requests you received)",
               query=models.ConversationsQuery, response=models.Conversations)
    async def list_conversations(session: Session, query: models.ConversationsQuery) -> Reply:
        user_id = session.user_id
        convs = await messaging.conversations_of(session)
        # A request is listed apart until answered; a declined one is hidden from its
        # recipient (docs/privacy.md).
        requests = [conv for conv in convs
                    if conv.direct is not None and conv.direct.is_request_for(user_id)]
        if query.requests:
            return render.conversations(requests, user_id)
        return render.conversations(
            [conv for conv in convs if conv not in requests
             and not (conv.direct is not None and conv.direct.hidden_from(user_id))], user_id)

    @api.route("GET", "/conversations/{conversation_id}", summary="One conversation",
               response=models.Conversation)
    async def get_conversation(session: Session, conversation_id: int) -> Reply:
        conv = await messaging.member_view(session, conversation_id)
        return render.conversation(conv, session.user_id)

    @api.route("PATCH", "/conversations/{conversation_id}",
               summary="Set disappearing messages (and, in a group, who may change them)",
               description=(
                   "disappearing_s: either member of a direct conversation; a group's "
                   "admins, or every member when anyone_sets_timer is on (which only "
                   "admins change). Each change is a system entry (disappearing_set, "
                   "timer_permission_set); messages sent after it carry expires_at."),
               body=models.ConversationChange, response=models.Conversation,
               errors=(*_GROUP_ERRORS, 429))
    async def change_conversation(session: Session, conversation_id: int,
                                  body: models.ConversationChange) -> Reply:
        if body.disappearing_s is None and body.anyone_sets_timer is None:
            conv = await messaging.member_view(session, conversation_id)
        else:
            conv = await conversations.set_disappearing(
                session, conversation_id, body.disappearing_s, body.anyone_sets_timer,
                client_address(request, services.proxies))
        return render.conversation(conv, session.user_id)

    @api.route("POST", "/conversations/{conversation_id}/read",
               summary="Move your read watermark", body=models.MarkRead,
               response=models.Receipts)
    async def mark_read(session: Session, conversation_id: int, body: models.MarkRead) -> Reply:
        return render.receipts(await messaging.mark_read(session, conversation_id, body.seq))

    @api.route("POST", "/groups/create", summary="Create a group; you are its admin",
               body=models.CreateGroup, status=201, response=models.Conversation,
               errors=(403, 404, 409, 429))
    async def create_group(session: Session, body: models.CreateGroup) -> Reply:
        address = client_address(request, services.proxies)
        with services.ratelimits.charging_unknown_users(account=session.user_id,
                                                        address=address):
            conv = await conversations.create_group(session, body.name, body.members,
                                                    address, body.encrypted)
        return render.conversation(conv, session.user_id), 201

    @api.route("POST", "/groups/{conversation_id}/add", summary="Add members (admins)",
               body=models.UserIds, response=models.Conversation, errors=(*_GROUP_ERRORS, 429))
    async def add_members(session: Session, conversation_id: int,
                          body: models.UserIds) -> Reply:
        address = client_address(request, services.proxies)
        with services.ratelimits.charging_unknown_users(account=session.user_id,
                                                        address=address):
            conv = await conversations.add_members(session, conversation_id, body.user_ids,
                                                   address)
        return render.conversation(conv, session.user_id)

    @api.route("POST", "/groups/{conversation_id}/remove", summary="Remove members (admins)",
               body=models.UserIds, response=models.Conversation, errors=_GROUP_ERRORS)
    async def remove_members(session: Session, conversation_id: int,
                             body: models.UserIds) -> Reply:
        conv = await conversations.remove_members(session, conversation_id, body.user_ids)
        return render.conversation(conv, session.user_id)

    @api.route("POST", "/groups/{conversation_id}/admins",
               summary="Promote members to admin (admins)", body=models.UserIds,
               response=models.Conversation, errors=_GROUP_ERRORS)
    async def promote(session: Session, conversation_id: int, body: models.UserIds) -> Reply:
        conv = await conversations.promote(session, conversation_id, body.user_ids)
        return render.conversation(conv, session.user_id)

    @api.route("POST", "/groups/{conversation_id}/leave", summary="Leave a group", status=204)
    async def leave(session: Session, conversation_id: int) -> Reply:
        await conversations.leave(session, conversation_id)
        return NO_CONTENT

    @api.route("PATCH", "/groups/{conversation_id}",
               summary="Rename a group and/or set its photo (admins)",
               body=models.RenameGroup, response=models.Conversation, errors=_GROUP_ERRORS)
    async def rename(session: Session, conversation_id: int, body: models.RenameGroup) -> Reply:
        photo = 0 if body.remove_photo else body.photo_media_id
        if body.name is None and photo is None:  # nothing to change (as PATCH /me)
            conv = await messaging.member_view(session, conversation_id)
        if body.name is not None:
            conv = await conversations.rename(session, conversation_id, body.name)
        if photo is not None:
            conv = await _set_group_photo(session, conversation_id, photo)
        return render.conversation(conv, session.user_id)

    async def _set_group_photo(session: Session, conversation_id: int,
                               photo: int) -> Conversation:
        media = services.media
        if photo:
            await media.pin_photo(photo, session.user_id)  # counted before it is shown
        try:
            conv, previous = await conversations.set_photo(session, conversation_id, photo)
        except BaseException:
            if photo:
                with trio.CancelScope(shield=True):
                    await media.unpin_photo(photo)
            raise
        if previous != photo:
            if previous:
                await media.unpin_photo(previous)
        elif photo:
            await media.unpin_photo(photo)  # it was the photo already: counted once
        return conv
