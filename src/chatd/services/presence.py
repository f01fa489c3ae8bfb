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

    async def came_online(self, session: LiveSession, *, first: bool) -> None:
        """A new socket: tell the session which contacts are online (anywhere); if it
        is the user's first socket anywhere (`first` here, and their home knows of no
        other shard holding one), tell their contacts."""
        contacts = session.contacts
        if first and not await self._delivery.online_elsewhere(session.user_id):
            self._delivery.publish_ephemeral(
                contacts, frames.presence_frame(session.user_id, True, None))
        for contact in sorted(await self._delivery.online_among(contacts)):
            # Ephemeral: a user with more online contacts than a socket's queue holds
            # must not be cut off as too slow for being told.
            session.push_ephemeral(frames.presence_frame(contact, True, None))

    async def went_offline(self, session: LiveSession, last_seen: int) -> bool:
        """The user's last socket here closed: if no other shard holds one, they are
        offline (told to contacts); returns whether they are."""
        if await self._delivery.online_elsewhere(session.user_id):
            return False
        shown = None if session.hides_last_seen else last_seen
        self._delivery.publish_ephemeral(
            session.contacts, frames.presence_frame(session.user_id, False, shown))
        return True

    async def profile_changed(self, session: Session, user: User) -> None:
        """Tell the user's contacts and their own devices (which also learn the new
        privacy settings) of a changed profile."""
        contacts: set[int] = {session.user_id}
        for conv in await self._messaging.conversations_of(session):
            contacts.update(conv.members)
        self._delivery.publish_profile(
            contacts, frames.profile_frame(frames.public_profile(user)), user.user_id,
            user.read_receipts, user.hide_last_seen)
