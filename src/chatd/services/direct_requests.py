"""The owner's side of message requests and blocks: the state of each direct chat.

A direct conversation's owner is the single writer of its `DirectState` (who opened the
request, whether it was accepted or declined, who of the pair blocks the other), kept on
the conversation it holds in memory (`Conversation.direct`) and in `direct_states`,
keyed by the conversation id, so it replicates with the conversation and a send into a
declined or blocked chat is refused right here, with no extra hop. A block of someone
never talked to writes the record before any conversation exists ("none"), so that the
blocked user cannot open one either.

Everything here runs inside the owner's group-commit commands (or answers queries at
once); listeners and the sessions' updates are told once the batch is durable.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from chatd.domain import groups
from chatd.domain import privacy as rules
from chatd.domain.ids import direct_conversation_id
from chatd.domain.models import Conversation, Message
from chatd.domain.privacy import ACCEPTED, DECLINED, NONE, PENDING, DirectState
from chatd.errors import BadRequest
from chatd.pending import Pending
from chatd.protocol import owner as ops
from chatd.services.commands import Commands
from chatd.services.owner import ConversationOwner
from chatd.storage import Batch, Store, records

#: listener(sender_id, recipient_id): a request was opened (its first message is durable).
RequestOpened = Callable[[int, int], None]
#: listener(sender_id, recipient_id, outcome): accepted, declined or blocked.
RequestAnswered = Callable[[int, int, str], None]
#: Tells the sessions of some users of a change to their contacts:
#: (user ids, [user, change, peer]); services/delivery.py PRIVACY.
PrivacySink = Callable[[list[int], list[Any]], None]


def state_to_wire(state: DirectState | None) -> list[Any] | None:
    if state is None:
        return None
    return [state.requested_by, state.status, list(state.blocked_by)]


def state_from_wire(conversation_id: int, data: Any) -> DirectState | None:
    if data is None:
        return None
    requested_by, status, blocked_by = data
    return DirectState(conversation_id, int(requested_by), str(status),
                       [int(user) for user in blocked_by])


class DirectRequests:
    def __init__(self, *, store: Store, owner: ConversationOwner, commands: Commands,
                 enabled: bool, publish: PrivacySink) -> None:
        self._store = store
        self._owner = owner
        self._commands = commands
        #: `[privacy] message_requests`: off, a direct chat is accepted when opened.
        self.enabled = enabled
        self._publish = publish
        # States of direct chats that do not exist (yet): blocks of strangers, from
        # commands whose batch has not landed (then the store has them).
        self._orphans: dict[int, DirectState] = {}
        self._opened: list[RequestOpened] = []
        self._answered: list[RequestAnswered] = []

    # -- the signals (abuse scoring consumes them) -------------------------------------------

    def on_request_opened(self, listener: RequestOpened) -> None:
        """`listener(sender_id, recipient_id)` once a request's first message is durable."""
        self._opened.append(listener)

    def on_request_answered(self, listener: RequestAnswered) -> None:
        """`listener(sender_id, recipient_id, outcome)` once the recipient's answer
        (accepted — a reply counts —, declined, blocked) is durable."""
        self._answered.append(listener)

    def _tell_answered(self, batch: Batch, sender: int, recipient: int, outcome: str) -> None:
        for listener in self._answered:
            batch.after_commit.append(partial(listener, sender, recipient, outcome))

    # -- state ----------------------------------------------------------------------------------

    def forget_all(self) -> None:
        self._orphans.clear()

    def forget_where(self, belongs: Callable[[int], bool]) -> None:
        for conversation_id in [c for c in self._orphans if belongs(c)]:
            del self._orphans[conversation_id]

    def _stored(self, conversation_id: int) -> DirectState | None:
        return self._orphans.get(conversation_id) or self._store.get(
            records.DIRECT_STATES, conversation_id)

    def state(self, conversation_id: int) -> tuple[Conversation | None, DirectState | None]:
        conv = self._owner.find(conversation_id)
        if conv is not None:
            return conv, conv.direct
        return None, self._stored(conversation_id)

    def _put(self, batch: Batch, conv: Conversation | None, state: DirectState) -> None:
        batch.put(records.DIRECT_STATES, state.conversation_id, state)
        if conv is not None:
            conv.direct = state
            self._owner.changing(batch, conv)
            return
        self._orphans[state.conversation_id] = state
        batch.after_commit.append(partial(self._landed_orphan, state))

    def _landed_orphan(self, state: DirectState) -> None:
        if self._orphans.get(state.conversation_id) is state:
            del self._orphans[state.conversation_id]

    def _tell(self, users: list[int], user: int, change: str, peer: int) -> None:
        self._publish(users, [user, change, peer])

    # -- hooks in OwnerApi's commands -----------------------------------------------------------

    def check_open(self, conversation_id: int, opener: int) -> None:
        """Before a direct chat is created: a block (either way) stops it."""
        rules.check_send(self._stored(conversation_id), opener)

    def opened(self, batch: Batch, conv: Conversation, opener: int, peer: int) -> None:
        """A direct chat was just created (in `batch`): a request unless requests are off
        or it is a note to self."""
        stored = self._stored(conv.conversation_id)
        blocked = list(stored.blocked_by) if stored is not None else []
        if self.enabled and opener != peer:
            self._put(batch, conv, DirectState(conv.conversation_id, opener, PENDING, blocked))
        elif stored is not None:
            self._put(batch, conv, DirectState(conv.conversation_id, 0, ACCEPTED, blocked))

    @staticmethod
    def check_send(conv: Conversation, sender_id: int) -> None:
        if conv.kind == "direct":
            rules.check_send(conv.direct, sender_id)

    def appended(self, batch: Batch, conv: Conversation, message: Message) -> None:
        """After a user message was appended to a direct chat: a reply accepts a request;
        the requester's first message opens it."""
        state = conv.direct
        if conv.kind != "direct" or state is None or state.status == ACCEPTED:
            return
        sender = message.sender_id
        peer = next((user for user in conv.members if user != sender), sender)
        if sender != state.requested_by:
            self._accept(batch, conv, state, outcome_to=sender)
        elif state.status == PENDING and message.seq == 1:
            for listener in self._opened:
                batch.after_commit.append(partial(listener, sender, peer))

    def _accept(self, batch: Batch, conv: Conversation, state: DirectState,
                outcome_to: int) -> None:
        accepted = DirectState(conv.conversation_id, state.requested_by, ACCEPTED,
                               list(state.blocked_by))
        self._put(batch, conv, accepted)
        self._tell_answered(batch, state.requested_by, outcome_to, "accepted")
        if accepted.is_contact:
            pair = [state.requested_by, outcome_to]
            batch.after_commit.append(partial(self._tell, pair, state.requested_by,
                                              "contact", outcome_to))

    def receipts_flow(self, conv: Conversation) -> bool:
        """Receipts of a direct chat go only between contacts (until a request is
        accepted, its recipient's receipts are not sent; nothing crosses a block)."""
        return conv.kind != "direct" or rules.is_contact(conv.direct)

    def relays_typing(self, conv: Conversation, user_id: int) -> bool:
        """Typing is presence: a request's recipient shows none until they accept."""
        state = conv.direct
        return conv.kind != "direct" or state is None or state.is_contact \
            or (state.status == PENDING and state.requested_by == user_id
                and not state.blocked_by)

    # -- commands and queries -------------------------------------------------------------------

    def answer(self, command: ops.AnswerRequest) -> Pending[Conversation]:
        if command.answer not in ("accept", "decline"):
            raise BadRequest("answer: accept or decline", code="invalid_field")

        def apply(batch: Batch) -> Conversation:
            conv = self._owner.get(command.conversation_id)
            groups.require_member(conv, command.user_id)
            state = rules.check_answer(conv.direct, command.user_id)
            if command.answer == "accept":
                self._accept(batch, conv, state, outcome_to=command.user_id)
            elif state.status != DECLINED:
                self._put(batch, conv, DirectState(conv.conversation_id, state.requested_by,
                                                   DECLINED, list(state.blocked_by)))
                self._tell_answered(batch, state.requested_by, command.user_id, "declined")
            return conv

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    @staticmethod
    def _check_pair(conversation_id: int, user_id: int, peer_id: int) -> None:
        if user_id == peer_id or direct_conversation_id(user_id, peer_id) != conversation_id:
            raise BadRequest("not the direct conversation of that pair",
                             code="malformed_command")

    def set_block(self, command: ops.SetBlock) -> Pending[None]:
        user, peer = command.user_id, command.peer_id
        self._check_pair(command.conversation_id, user, peer)

        def apply(batch: Batch) -> None:
            conv, state = self.state(command.conversation_id)
            if state is None:
                state = DirectState(command.conversation_id, 0,
                                    ACCEPTED if conv is not None else NONE)
            blocked_by = [who for who in state.blocked_by if who != user]
            status = state.status
            if command.blocked:
                blocked_by.append(user)
                if state.is_request_for(user):
                    # Blocking a request answers it.
                    status = DECLINED
                    self._tell_answered(batch, peer, user, "blocked")
            if blocked_by == state.blocked_by and status == state.status:
                return
            self._put(batch, conv, DirectState(command.conversation_id, state.requested_by,
                                               status, blocked_by))
            if command.blocked:
                batch.after_commit.append(partial(self._tell, [user, peer], user, "block",
                                                  peer))

        return self._commands.enqueue(apply, conversation_id=command.conversation_id)

    def status(self, query: ops.DirectStatus) -> list[Any]:
        """[status, blocked_by] of the pair's chat: status "none" when there is none."""
        self._check_pair(query.conversation_id, query.user_id, query.peer_id)
        conv, state = self.state(query.conversation_id)
        if state is None:
            return [ACCEPTED if conv is not None else NONE, 0, []]
        return [state.status, state.requested_by, list(state.blocked_by)]
