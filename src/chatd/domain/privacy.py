"""Privacy rules, pure: settings, message requests and blocks (docs/privacy.md).

A user's *contacts* are the people they have an accepted direct chat with. The state of
that chat (`DirectState`) lives with the direct conversation on its owner shard, keyed
by the conversation id, so the owner decides every send with no extra hop and the state
replicates with the conversation. It exists before the conversation does when someone
blocks a person they never talked to: the block must stop the first message too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from chatd.errors import BadRequest, Conflict, Forbidden

if TYPE_CHECKING:
    from chatd.domain.models import Conversation, User

#: Who sees a user's last seen, or their status text and photo.
VISIBILITY = ("everyone", "contacts", "nobody")
#: Who may add a user to a group (the others send an invite).
GROUPS_ADD = ("everyone", "contacts")

Visibility = Literal["everyone", "contacts", "nobody"]

#: The states of a direct chat. "none": no conversation yet (the record is only there
#: for a block); a conversation without a record is "accepted" (it predates requests).
NONE, PENDING, ACCEPTED, DECLINED = "none", "pending", "accepted", "declined"
#: What a request's recipient did (the outcomes `on_request_answered` reports).
OUTCOMES = ("accepted", "declined", "blocked")


@dataclass(slots=True)
class DirectState:
    """The request and block state of one direct conversation (records.DIRECT_STATES)."""

    conversation_id: int
    #: Who opened the request (the first to open the chat); 0 when there was none.
    requested_by: int = 0
    status: str = ACCEPTED
    #: Who of the pair blocks the other (either, or both).
    blocked_by: list[int] = field(default_factory=list)

    @property
    def is_contact(self) -> bool:
        """Whether the pair are each other's contacts."""
        return self.status == ACCEPTED and not self.blocked_by

    def is_request_for(self, user_id: int) -> bool:
        """Whether this is a request `user_id` received and has not answered."""
        return self.status == PENDING and self.requested_by != user_id

    def hidden_from(self, user_id: int) -> bool:
        """A declined request is hidden from its recipient's lists."""
        return self.status == DECLINED and self.requested_by != user_id


@dataclass(frozen=True, slots=True)
class GroupInvite:
    """An invitation to a group (records.INVITES, on the group's owner)."""

    conversation_id: int
    user_id: int
    invited_by: int
    created_at: int


def is_contact(state: DirectState | None) -> bool:
    """A direct conversation with no state record predates requests: accepted."""
    return state is None or state.is_contact


def cannot_message() -> Forbidden:
    """One answer whether the recipient declined the request or blocked the sender: the
    sender does not learn which (docs/privacy.md, "Blocking")."""
    return Forbidden("this user is not taking messages from you", code="cannot_message")


def check_send(state: DirectState | None, sender_id: int) -> None:
    """May `sender_id` write into the direct conversation now?"""
    if state is None:
        return
    if state.blocked_by:
        if sender_id in state.blocked_by:
            raise Forbidden("you blocked this user; unblock them first "
                            "(DELETE /blocks/{user_id})", code="you_blocked")
        raise cannot_message()
    if state.status == DECLINED and sender_id == state.requested_by:
        raise cannot_message()


def check_answer(state: DirectState | None, user_id: int) -> DirectState:
    """Only a request's recipient answers it (accepting a declined one is allowed: they
    changed their mind)."""
    if state is None or state.status not in (PENDING, DECLINED) \
            or state.requested_by == user_id:
        raise Conflict("this conversation is not a message request to you",
                       code="not_a_request")
    return state


def shows(setting: str, contact: bool) -> bool:
    """Whether a `setting` (everyone / contacts / nobody) shows something to a viewer."""
    return setting == "everyone" or (setting == "contacts" and contact)


def check_settings(*, last_seen: str | None, profile: str | None,
                   groups_add: str | None) -> None:
    for name, value, allowed in (("last_seen", last_seen, VISIBILITY),
                                 ("profile", profile, VISIBILITY),
                                 ("groups_add", groups_add, GROUPS_ADD)):
        if value is not None and value not in allowed:
            raise BadRequest(f"{name}: one of {', '.join(allowed)}", code="invalid_field")


def with_settings(user: User, *, hide_last_seen: bool | None, last_seen: str | None,
                  profile: str | None, groups_add: str | None) -> User:
    """The user with these settings changed (None: unchanged). `hide_last_seen` (PATCH
    /me) and `last_seen` (PATCH /me/privacy) are one setting: hidden is "nobody"."""
    hide, seen = user.hide_last_seen, user.last_seen_visibility
    if hide_last_seen is not None:
        hide = hide_last_seen
        if not hide and seen == "nobody":
            seen = "everyone"
    if last_seen is not None:
        seen, hide = last_seen, last_seen == "nobody"
    return dataclasses.replace(
        user, hide_last_seen=hide, last_seen_visibility=seen,
        profile_visibility=profile or user.profile_visibility,
        groups_add=groups_add or user.groups_add)


@dataclass(slots=True)
class Audience:
    """Who a connected user's presence reaches, as of connecting (services/presence.py)."""

    #: Told of their presence: who shares a conversation with them, but for a direct
    #: chat that is not accepted (a request, declined or blocked), and those they block.
    members: set[int] = field(default_factory=set)
    #: Their contacts (accepted direct chats): the "contacts" of their settings.
    contacts: set[int] = field(default_factory=set)
    #: Whose presence they may not be shown: who blocks them (as far as their chats say)
    #: and whose request they sent and is not accepted.
    hidden: set[int] = field(default_factory=set)


def audience_of(user_id: int, conversations: Iterable[Conversation],
                blocked: set[int]) -> Audience:
    audience = Audience()
    direct_only: set[int] = set()
    for conv in conversations:
        if conv.kind != "direct":
            audience.members.update(conv.members)
            continue
        peer = next((user for user in conv.members if user != user_id), None)
        if peer is None:
            continue
        state = conv.direct
        if is_contact(state):
            audience.contacts.add(peer)
            audience.members.add(peer)
        else:
            direct_only.add(peer)
            if state is not None and peer in state.blocked_by:
                audience.hidden.add(peer)
    # A request's peer gets nothing unless a group is shared as well (where members
    # see each other anyway); a blocked user gets nothing at all.
    audience.hidden |= direct_only - audience.members
    audience.members -= blocked
    audience.members.discard(user_id)
    audience.contacts -= blocked
    return audience


def reduced(user: User) -> User:
    """A profile without what the `profile` setting covers (status text and photo)."""
    return dataclasses.replace(user, status_text="", photo_media_id=0)
