"""Presence and profile events: who is online, told to the people who share a
conversation with them. Eventually consistent and never logged; they travel the same way
as messages (services/delivery.py), so they cross shards like everything else.
"""

from __future__ import annotations

from chatd.domain.models import Session, User
from chatd.protocol import frames
from chatd.services.delivery import Delivery
from chatd.services.live import LiveSession
from chatd.services.messaging import MessagingService


class Presence:
    def __init__(self, *, delivery: Delivery, messaging: MessagingService) -> None:
        self._delivery = delivery
        self._messaging = messaging

    async def came_online(self, session: LiveSession) -> None:
        """The user's first socket here: tell their contacts, and tell the session which
        of them are online (anywhere)."""
        contacts = session.contacts
        self._delivery.publish_ephemeral(
            contacts, frames.presence_frame(session.user_id, True, None))
        for contact in sorted(await self._delivery.online_among(contacts)):
            session.push(frames.presence_frame(contact, True, None))

    def went_offline(self, session: LiveSession, last_seen: int) -> None:
        shown = None if session.hides_last_seen else last_seen
        self._delivery.publish_ephemeral(
            session.contacts, frames.presence_frame(session.user_id, False, shown))

    async def profile_changed(self, session: Session, user: User) -> None:
        """Tell the user's contacts and their own devices (which also learn the new
        privacy settings) of a changed profile."""
        contacts: set[int] = {session.user_id}
        for conv in await self._messaging.conversations_of(session):
            contacts.update(conv.members)
        self._delivery.publish_profile(
            contacts, frames.profile_frame(frames.public_profile(user)), user.user_id,
            user.read_receipts, user.hide_last_seen)
