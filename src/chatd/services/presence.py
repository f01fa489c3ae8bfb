"""Presence and profile events: who is online, told to the people who share a
conversation with them. Eventually consistent and never logged; they travel the same way
as messages (services/delivery.py), so they cross shards like everything else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from chatd.domain import privacy as rules
from chatd.domain.models import Conversation, Session, User
from chatd.protocol import frames
from chatd.services.delivery import Delivery
from chatd.services.live import LiveSession
from chatd.services.messaging import MessagingService

if TYPE_CHECKING:
    from chatd.services.privacy import PrivacyService


class Presence:
    def __init__(self, *, delivery: Delivery, messaging: MessagingService,
                 privacy: PrivacyService | None = None) -> None:
        self._delivery = delivery
        self._messaging = messaging
        self._privacy = privacy

    async def settle(self, session: LiveSession, conversations: Iterable[Conversation],
                     user: User) -> None:
        """Once the session has started: who its presence reaches and whose it may be
        shown (domain/privacy.py `audience_of`), computed once here, not per event."""
        blocked = (await self._privacy.blocked_list(session.user_id)
                   if self._privacy is not None else set())
        audience = rules.audience_of(session.user_id, conversations, blocked)
        session.contacts = audience.members
        session.direct_contacts = audience.contacts
        session.hidden = audience.hidden
        session.last_seen_setting = user.last_seen_setting

    async def came_online(self, session: LiveSession, *, first: bool) -> None:
        """A new socket: tell the session which contacts are online (anywhere); if it
        is the user's first socket anywhere (`first` here, and their home knows of no
        other shard holding one), tell their contacts."""
        contacts = session.contacts
        if first and not await self._delivery.online_elsewhere(session.user_id):
            self._delivery.publish_ephemeral(
                contacts, frames.presence_frame(session.user_id, True, None))
        watched = contacts - session.hidden
        if self._privacy is not None:
            # Who blocks this user without a direct chat saying so (a shared group): the
            # homes of those not known as contacts say.
            unsure = watched - session.direct_contacts
            if unsure:
                watched -= await self._privacy.blocking(session.user_id, unsure)
        for contact in sorted(await self._delivery.online_among(watched)):
            # Ephemeral: a user with more online contacts than a socket's queue holds
            # must not be cut off as too slow for being told.
            session.push_ephemeral(frames.presence_frame(contact, True, None))

    async def went_offline(self, session: LiveSession, last_seen: int) -> bool:
        """The user's last socket here closed: if no other shard holds one, they are
        offline (told to contacts); returns whether they are."""
        if await self._delivery.online_elsewhere(session.user_id):
            return False
        setting = "nobody" if session.hides_last_seen else session.last_seen_setting
        told = session.contacts
        with_time = told if setting == "everyone" else (
            told & session.direct_contacts if setting == "contacts" else set())
        if with_time:
            self._delivery.publish_ephemeral(
                with_time, frames.presence_frame(session.user_id, False, last_seen))
        if told - with_time:
            self._delivery.publish_ephemeral(
                told - with_time, frames.presence_frame(session.user_id, False, None))
        return True

    async def profile_changed(self, session: Session, user: User) -> None:
        """Tell the user's contacts and their own devices (which also learn the new
        privacy settings) of a changed profile."""
        blocked = (await self._privacy.blocked_list(session.user_id)
                   if self._privacy is not None else set())
        audience = rules.audience_of(session.user_id,
                                     await self._messaging.conversations_of(session), blocked)
        full = {session.user_id} | {
            user_id for user_id in audience.members
            if rules.shows(user.profile_visibility, user_id in audience.contacts)}
        self._delivery.publish_profile(
            full, frames.profile_frame(frames.public_profile(user)), user.user_id,
            user.read_receipts, user.hide_last_seen, user.last_seen_setting)
        rest = audience.members - full
        if rest:
            # They see the name change, not the status text or photo.
            self._delivery.publish_profile(
                rest, frames.profile_frame(frames.public_profile(rules.reduced(user))),
                user.user_id, user.read_receipts, user.hide_last_seen,
                user.last_seen_setting)
