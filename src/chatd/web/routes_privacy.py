"""Routes: /me/privacy, /blocks, message requests (/conversations/{id}/accept|decline)
and group invites (/invites, /groups/{id}/invite/accept|decline). docs/privacy.md."""

from __future__ import annotations

from contextlib import AbstractContextManager

from quart import request

from chatd.domain.models import Session
from chatd.services.context import Services
from chatd.web import models, render
from chatd.web.api import Api
from chatd.web.client_address import client_address
from chatd.web.render import NO_CONTENT, Reply


def register(api: Api, services: Services) -> None:
    privacy = services.privacy

    def writes(session: Session) -> None:
        """A settings change or a block is written on the home and told to the sessions
        of the user's contacts (a block to the chat's owner too): unlimited, toggling it
        would keep both busy. The `messages` bucket, as a message to them."""
        services.ratelimits.take("messages", account=session.user_id,
                                 address=client_address(request, services.proxies))

    def probes(session: Session) -> AbstractContextManager[None]:
        return services.ratelimits.charging_unknown_users(
            account=session.user_id, address=client_address(request, services.proxies))

    @api.route("GET", "/me/privacy", summary="Your privacy settings",
               response=models.PrivacySettings)
    async def get_privacy(session: Session) -> Reply:
        return render.privacy_settings(await services.users.get_user(session.user_id))

    @api.route("PATCH", "/me/privacy",
               summary="Change who sees your last seen and profile, who may add you to "
                       "groups, and read receipts",
               body=models.PrivacyChange, response=models.PrivacySettings, errors=(429,))
    async def change_privacy(session: Session, body: models.PrivacyChange) -> Reply:
        writes(session)
        user = await privacy.change_settings(
            session, last_seen=body.last_seen, profile=body.profile,
            groups_add=body.groups_add, read_receipts=body.read_receipts)
        # The user's sessions (and contacts) follow: as a profile change.
        await services.presence.profile_changed(session, user)
        return render.privacy_settings(user)

    @api.route("GET", "/blocks", summary="The users you block", response=models.Blocks)
    async def list_blocks(session: Session) -> Reply:
        return models.Blocks([models.Block(user_id, at)
                              for user_id, at in await privacy.blocks(session)])

    @api.route("POST", "/blocks/{user_id}",
               summary="Block a user: no direct messages, group adds, presence or profile "
                       "changes from you to them", status=204, errors=(404, 429))
    async def block(session: Session, user_id: int) -> Reply:
        writes(session)
        with probes(session):
            await privacy.block(session, user_id)
        return NO_CONTENT

    @api.route("DELETE", "/blocks/{user_id}", summary="Unblock a user", status=204,
               errors=(404, 429))
    async def unblock(session: Session, user_id: int) -> Reply:
        writes(session)
        with probes(session):
            await privacy.block(session, user_id, blocked=False)
        return NO_CONTENT

    @api.route("POST", "/conversations/{conversation_id}/accept",
               summary="Accept a message request (replying accepts it too)",
               response=models.Conversation, errors=(404, 409))
    async def accept_request(session: Session, conversation_id: int) -> Reply:
        conv = await privacy.answer_request(session, conversation_id, "accept")
        return render.conversation(conv, session.user_id)

    @api.route("POST", "/conversations/{conversation_id}/decline",
               summary="Decline a message request: hidden from your lists, no more "
                       "messages from its sender", response=models.Conversation,
               errors=(404, 409))
    async def decline_request(session: Session, conversation_id: int) -> Reply:
        conv = await privacy.answer_request(session, conversation_id, "decline")
        return render.conversation(conv, session.user_id)

    @api.route("GET", "/invites", summary="Group invites waiting for your answer",
               response=models.Invites)
    async def list_invites(session: Session) -> Reply:
        return models.Invites([models.Invite(conversation_id, name, invited_by, created_at)
                               for conversation_id, name, invited_by, created_at
                               in await privacy.invites(session)])

    @api.route("POST", "/groups/{conversation_id}/invite/accept",
               summary="Accept a group invite: you join the group",
               response=models.Conversation, errors=(404, 409))
    async def accept_invite(session: Session, conversation_id: int) -> Reply:
        conv = await privacy.answer_invite(session, conversation_id, True)
        assert conv is not None
        return render.conversation(conv, session.user_id)

    @api.route("POST", "/groups/{conversation_id}/invite/decline",
               summary="Decline a group invite", status=204, errors=(404,))
    async def decline_invite(session: Session, conversation_id: int) -> Reply:
        await privacy.answer_invite(session, conversation_id, False)
        return NO_CONTENT
