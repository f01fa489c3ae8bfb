"""Routes: notification preferences (docs/notifications.md): mute per conversation and
message previews. Both are kept on the user's home (services/notify_prefs.py), where the
push and email notifiers read them."""

from __future__ import annotations

from quart import request

from chatd.domain.models import Session
from chatd.services.context import Services
from chatd.web import models_notify as notify
from chatd.web.api import Api
from chatd.web.client_address import client_address
from chatd.web.render import Reply


def register(api: Api, services: Services) -> None:
    settings = services.notify_settings

    def writes(session: Session) -> None:
        """A change is a write on the home: the messages bucket, as other settings."""
        services.ratelimits.take("messages", account=session.user_id,
                                 address=client_address(request, services.proxies))

    @api.route("GET", "/conversations/{conversation_id}/notifications",
               summary="Whether a conversation is muted for you", response=notify.MuteState)
    async def get_mute(session: Session, conversation_id: int) -> Reply:
        await services.messaging.member_view(session, conversation_id)
        until = await settings.muted_until(session.user_id, conversation_id)
        return notify.MuteState(conversation_id, until)

    @api.route("PATCH", "/conversations/{conversation_id}/notifications",
               summary="Mute a conversation until a time (0 or null: unmute)",
               description=(
                   "For you on all your devices: no push or email for its messages until "
                   "`muted_until` (ms since the epoch), except messages that mention you. "
                   "A time already past unmutes; 10^15 is 'forever'."),
               body=notify.MuteChange, response=notify.MuteState, errors=(429,))
    async def set_mute(session: Session, conversation_id: int,
                       body: notify.MuteChange) -> Reply:
        writes(session)
        # Only a member mutes (404 otherwise, as for any conversation they cannot see).
        await services.messaging.member_view(session, conversation_id)
        until = await settings.set_mute(session.user_id, conversation_id,
                                        body.muted_until or 0)
        return notify.MuteState(conversation_id, until)

    @api.route("GET", "/me/notifications/previews",
               summary="Whether notifications may show message text",
               response=notify.PreviewsState)
    async def get_previews(session: Session) -> Reply:
        return notify.PreviewsState(await settings.previews(session.user_id))

    @api.route("PATCH", "/me/notifications/previews",
               summary="Allow or stop message text in notifications (off by default)",
               description=(
                   "Push notifications and emails of conversations that are not end-to-end "
                   "encrypted carry the sender's name and the start of the text only when "
                   "this is on; otherwise they say 'New message'."),
               body=notify.PreviewsChange, response=notify.PreviewsState, errors=(429,))
    async def set_previews(session: Session, body: notify.PreviewsChange) -> Reply:
        writes(session)
        return notify.PreviewsState(await settings.previews(session.user_id, body.previews))
