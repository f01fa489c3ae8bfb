"""What an owner shard is asked to do, as values: the owner commands and their wire forms.

A conversation has one owner shard, its single writer. Everything that changes a
conversation is one of the commands below: a typed, immutable value that the owner's
committer runs (`services/owner_api.py`). The same value runs locally or crosses the
mesh (`docs/mesh.md`): on the wire it is a `REQ` whose `method` is the command's
`METHOD` and whose `body` is `to_wire()`, a msgpack map of the fields named below, and
`from_wire` rebuilds it on the owner. Results travel the same way (the `*_to_wire`
functions at the end).

Commands carry the acting user's id, never a token: the shard the client is connected to
authenticated it, and peers are authenticated shards (the mesh handshake), so an owner
trusts the user id a peer names exactly as it trusts its own web layer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from chatd.domain.models import (
    Body,
    Conversation,
    Created,
    HistoryPage,
    Member,
    Message,
    SendResult,
    Watermark,
)
from chatd.domain.privacy import DirectState
from chatd.domain.targets import Annotation
from chatd.domain.unread import SnapshotSkips

C = TypeVar("C", bound="OwnerCommand")


class WireError(ValueError):
    """A peer sent a body that does not fit the command (a bug in the peer, or a newer
    version): answered 400 to the peer, never applied."""


@dataclass(frozen=True, slots=True)
class OwnerCommand:
    METHOD: ClassVar[str] = ""
    #: Every command names the conversation it changes (its owner runs it); commands
    #: that create one name the id they create.
    conversation_id: int

    def to_wire(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @classmethod
    def from_wire(cls: type[C], body: Any) -> C:
        return cls(**cls.checked_fields(body))

    @classmethod
    def checked_fields(cls, body: Any) -> dict[str, Any]:
        """`body`'s fields, each of the type the command declares (else WireError)."""
        if not isinstance(body, dict):
            raise WireError(f"{cls.METHOD}: the body must be a map")
        names = {field.name: field.type for field in fields(cls)}
        if set(body) != set(names):
            raise WireError(f"{cls.METHOD}: expected fields {sorted(names)}, got {sorted(body)}")
        for name, value in body.items():
            _check_type(cls.METHOD, name, names[name], value)
        return body


def _check_type(method: str, name: str, annotation: Any, value: Any) -> None:
    # Annotations are strings (`from __future__ import annotations`).
    expected: tuple[type, ...] = {
        "int": (int,), "str": (str,), "bool": (bool,), "list[int]": (list,),
        "Body": (str, bytes, dict), "dict[int, int]": (dict,),
        "list[dict[str, Any]]": (list,),
    }.get(str(annotation), (object,))
    if str(annotation) == "list[dict[str, Any]]":
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise WireError(f"{method}: field {name} must be a list of maps")
        return
    if not isinstance(value, expected) or (int in expected and isinstance(value, bool)):
        raise WireError(f"{method}: field {name} has the wrong type")
    if isinstance(value, list) and not all(
            isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise WireError(f"{method}: field {name} must be a list of ids")


# -- commands (run by the owner's committer; each answers once durable) ------------------

@dataclass(frozen=True, slots=True)
class Send(OwnerCommand):
    """Append a message. Answer: `SendResult` (the original one for a resend)."""

    METHOD: ClassVar[str] = "owner.send"
    sender_id: int
    sender_device: int
    client_msg_id: str
    content_type: str
    body: Body
    #: The attachments' records as the media's shards gave them (`MediaService.attach`,
    #: `domain.media.attachment_record`).
    attachments: list[dict[str, Any]] = field(default_factory=list)
    #: The seq this message replies to (0: none); the owner checks the sender may read it.
    reply_to: int = 0
    #: Who it mentions: ids the client named and those its text's @handles resolved to
    #: (on the sender's shard); the owner keeps the members among them.
    mentions: list[int] = field(default_factory=list)
    #: A forwarded copy's hop count (0: not a forward; services/forwarding.py).
    forwarded: int = 0

    #: Fields a peer from before them leaves out, with the value that means "unused".
    _OPTIONAL: ClassVar[dict[str, Any]] = {
        "attachments": [], "reply_to": 0, "mentions": [], "forwarded": 0}

    def to_wire(self) -> dict[str, Any]:
        # Unused optional fields stay off the wire, so an owner from before them still
        # takes a plain send (a rolling upgrade).
        wire = OwnerCommand.to_wire(self)
        for name in ("reply_to", "mentions", "forwarded"):
            if not wire[name]:
                del wire[name]
        return wire

    @classmethod
    def from_wire(cls, body: Any) -> Send:
        # A peer from before attachments (or replies, mentions, forwards) existed sends
        # none (a rolling upgrade).
        if isinstance(body, dict):
            body = {**cls._OPTIONAL, **body}
        return cls(**cls.checked_fields(body))


@dataclass(frozen=True, slots=True)
class MarkRead(OwnerCommand):
    """Move a member's read watermark. Answer: the new `Watermark`."""

    METHOD: ClassVar[str] = "owner.mark_read"
    user_id: int
    seq: int
    #: The reader's `read_receipts` setting (whether the move is shown to others).
    shares_read: bool


@dataclass(frozen=True, slots=True)
class Acknowledge(OwnerCommand):
    """A member's device has everything up to `seq`: move their delivered watermark. A
    hint (no fsync of its own, docs/architecture.md "Delivery hints"). Answer: nothing."""

    METHOD: ClassVar[str] = "owner.ack"
    user_id: int
    seq: int
    shares_read: bool


@dataclass(frozen=True, slots=True)
class OpenDirect(OwnerCommand):
    """The 1:1 conversation of `user_id` and `peer_id` (its id is derived from the pair),
    created on first use. Answer: (conversation, created)."""

    METHOD: ClassVar[str] = "owner.open_direct"
    user_id: int
    peer_id: int
    #: End-to-end encrypted: 1 yes, 0 no, -1 either (an existing one as it is; a new one
    #: not). A peer from before it leaves it out (-1).
    encrypted: int = -1

    def to_wire(self) -> dict[str, Any]:
        wire = OwnerCommand.to_wire(self)
        if wire["encrypted"] == -1:
            del wire["encrypted"]  # an owner from before it still takes it
        return wire

    @classmethod
    def from_wire(cls, body: Any) -> OpenDirect:
        if isinstance(body, dict):
            body = {"encrypted": -1, **body}
        return cls(**cls.checked_fields(body))


@dataclass(frozen=True, slots=True)
class CreateGroup(OwnerCommand):
    """A new group with the creator as admin. Answer: the conversation."""

    METHOD: ClassVar[str] = "owner.create_group"
    creator_id: int
    name: str
    member_ids: list[int]
    #: End-to-end encrypted, for ever (issue 14). Left off the wire when false.
    encrypted: bool = False

    def to_wire(self) -> dict[str, Any]:
        wire = OwnerCommand.to_wire(self)
        if not wire["encrypted"]:
            del wire["encrypted"]
        return wire

    @classmethod
    def from_wire(cls, body: Any) -> CreateGroup:
        if isinstance(body, dict):
            body = {"encrypted": False, **body}
        return cls(**cls.checked_fields(body))


@dataclass(frozen=True, slots=True)
class AddMembers(OwnerCommand):
    METHOD: ClassVar[str] = "owner.add_members"
    actor_id: int
    user_ids: list[int]


@dataclass(frozen=True, slots=True)
class RemoveMembers(OwnerCommand):
    METHOD: ClassVar[str] = "owner.remove_members"
    actor_id: int
    user_ids: list[int]


@dataclass(frozen=True, slots=True)
class Promote(OwnerCommand):
    METHOD: ClassVar[str] = "owner.promote"
    actor_id: int
    user_ids: list[int]


@dataclass(frozen=True, slots=True)
class Leave(OwnerCommand):
    """Answer: nothing."""

    METHOD: ClassVar[str] = "owner.leave"
    user_id: int


@dataclass(frozen=True, slots=True)
class Rename(OwnerCommand):
    METHOD: ClassVar[str] = "owner.rename"
    actor_id: int
    name: str


@dataclass(frozen=True, slots=True)
class SetGroupPhoto(OwnerCommand):
    """An admin sets (or, with 0, removes) a group's photo. Answer: (the conversation,
    the media id it showed before: the caller uncounts it)."""

    METHOD: ClassVar[str] = "owner.set_group_photo"
    actor_id: int
    media_id: int


@dataclass(frozen=True, slots=True)
class DeleteMessage(OwnerCommand):
    """Delete the entry at `seq`: for everyone (a tombstone replaces it, a
    `message_deleted` system entry tells the members) or only for `actor_id` (hidden
    from their reads). Answer: nothing."""

    METHOD: ClassVar[str] = "owner.delete_message"
    actor_id: int
    seq: int
    for_everyone: bool


@dataclass(frozen=True, slots=True)
class SetDisappearing(OwnerCommand):
    """Set the disappearing-messages timer (seconds; -1: unchanged) and, in a group,
    whether every member may change it (1, 0; -1: unchanged). Answer: the conversation."""

    METHOD: ClassVar[str] = "owner.set_disappearing"
    actor_id: int
    disappearing_s: int
    anyone_sets_timer: int


@dataclass(frozen=True, slots=True)
class EraseMember(OwnerCommand):
    """Erase a user from a conversation (their account is being erased): every message
    they sent becomes a tombstone, then they are removed with a `member_erased` system
    entry (in a direct conversation too). Runs in several batches on a long log.
    Idempotent. Answer: nothing."""

    METHOD: ClassVar[str] = "owner.erase_member"
    user_id: int


@dataclass(frozen=True, slots=True)
class React(OwnerCommand):
    """Set `user_id`'s reaction to the message at `seq` (one per user and message; a new
    one replaces the old), or with `remove` take it away (only if it is `emoji`, any
    with ""), appending a `chatd/reaction` entry when it changes. Answer: the message's
    reactions, [[emoji, count, whether the user reacted with it], ...]."""

    METHOD: ClassVar[str] = "owner.react"
    user_id: int
    device_id: int
    seq: int
    emoji: str
    remove: bool


@dataclass(frozen=True, slots=True)
class Edit(OwnerCommand):
    """The sender replaces the body of the message at `seq` within the edit window,
    appending a `chatd/edit` entry. Answer: [seq of the edit entry, its ts]."""

    METHOD: ClassVar[str] = "owner.edit"
    user_id: int
    device_id: int
    seq: int
    body: Body


@dataclass(frozen=True, slots=True)
class Pin(OwnerCommand):
    """Pin (or unpin) the message at `seq`, appending a `chatd/pin` entry when that
    changes anything. Answer: nothing."""

    METHOD: ClassVar[str] = "owner.pin"
    actor_id: int
    device_id: int
    seq: int
    pinned: bool


# -- queries (read the owner's state; no commit) ------------------------------------------


@dataclass(frozen=True, slots=True)
class EditHistory(OwnerCommand):
    """The bodies a message has had, oldest first, the original first. Answer:
    [[seq, body, ts], ...] (the original's seq, then each edit entry's)."""

    METHOD: ClassVar[str] = "owner.edit_history"
    user_id: int
    seq: int

@dataclass(frozen=True, slots=True)
class View(OwnerCommand):
    """The conversation as `user_id` may see it (404 unless a member). Answer: the
    conversation."""

    METHOD: ClassVar[str] = "owner.view"
    user_id: int


@dataclass(frozen=True, slots=True)
class History(OwnerCommand):
    """A page of the log (-1 stands for "not given" in `after` and `before`; 0 for the
    default `limit`), cut short past about `max_bytes` of bodies (0: no bound; a page
    asked over the mesh must fit a frame). Answer: {messages, has_more}."""

    METHOD: ClassVar[str] = "owner.history"
    user_id: int
    after: int
    before: int
    limit: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Status(OwnerCommand):
    """Delivered and read per member for one message. Answer: [[user, delivered, read
    seq], ...]; the asking shard applies everyone's read-receipt privacy."""

    METHOD: ClassVar[str] = "owner.status"
    user_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class Typing(OwnerCommand):
    """Relay a typing notice to the other members. Answer: whether it was relayed."""

    METHOD: ClassVar[str] = "owner.typing"
    user_id: int


@dataclass(frozen=True, slots=True)
class ReadLog(OwnerCommand):
    """Catch-up: up to `limit` entries after `after` (at most about `max_bytes` of
    bodies), for a member. Answer: {messages, head_seq}; messages empty and head_seq -1
    when the user is not a member (any more)."""

    METHOD: ClassVar[str] = "owner.read_log"
    user_id: int
    after: int
    limit: int
    max_bytes: int


#: Asked of every shard (conversation_id 0: not about one conversation).
@dataclass(frozen=True, slots=True)
class ConversationsOf(OwnerCommand):
    """The conversations this shard owns that `user_id` is a member of, each with where
    the device's delivery starts (`cursors`: its acknowledged seqs; a conversation it
    never acked starts at the first entry written after the device was created), a page
    at a time in conversation id order from after `after`. Answer: [[[conversation,
    start], ...], the `after` of the next page, or 0 at the end]."""

    METHOD: ClassVar[str] = "owner.conversations_of"
    user_id: int
    device_id: int
    after: int
    #: On the wire, a list of [conversation_id, seq] pairs: the mesh's msgpack takes
    #: string map keys only.
    cursors: dict[int, int]

    def to_wire(self) -> dict[str, Any]:
        return {"conversation_id": self.conversation_id, "user_id": self.user_id,
                "device_id": self.device_id, "after": self.after,
                "cursors": [[conversation, seq] for conversation, seq in self.cursors.items()]}

    @classmethod
    def from_wire(cls, body: Any) -> ConversationsOf:
        if not isinstance(body, dict) or not isinstance(body.get("cursors"), list):
            raise WireError(f"{cls.METHOD}: cursors must be a list of pairs")
        pairs = body["cursors"]
        if not all(isinstance(pair, list) and len(pair) == 2 and all(
                isinstance(part, int) and not isinstance(part, bool) for part in pair)
                for pair in pairs):
            raise WireError(f"{cls.METHOD}: cursors must be [conversation_id, seq] pairs")
        checked = cls.checked_fields({**body, "cursors": {}})
        return cls(**{**checked, "cursors": {conversation: seq for conversation, seq in pairs}})


# -- privacy: message requests, blocks, group invites (docs/privacy.md) -------------------

@dataclass(frozen=True, slots=True)
class AnswerRequest(OwnerCommand):
    """A message request's recipient accepts or declines it (`answer`). Answer: the
    conversation."""

    METHOD: ClassVar[str] = "owner.answer_request"
    user_id: int
    answer: str


@dataclass(frozen=True, slots=True)
class SetBlock(OwnerCommand):
    """`user_id` blocks (or unblocks) `peer_id` on their direct chat's record, which is
    written even when there is no chat yet. Answer: nothing."""

    METHOD: ClassVar[str] = "owner.set_block"
    user_id: int
    peer_id: int
    blocked: bool


@dataclass(frozen=True, slots=True)
class DirectStatus(OwnerCommand):
    """The state of the pair's direct chat (whether they are contacts, who blocks whom).
    Answer: [status, requested_by, blocked_by]; status "none" when there is no chat."""

    METHOD: ClassVar[str] = "owner.direct_status"
    user_id: int
    peer_id: int


@dataclass(frozen=True, slots=True)
class Invite(OwnerCommand):
    """An admin invites users a group may not take directly (their `groups_add`).
    Answer: the ids invited (not members already)."""

    METHOD: ClassVar[str] = "owner.invite"
    actor_id: int
    user_ids: list[int]


@dataclass(frozen=True, slots=True)
class AnswerInvite(OwnerCommand):
    """The invitee accepts (joins, with an `invite_accepted` entry) or declines. Answer:
    the conversation when accepted, else nothing."""

    METHOD: ClassVar[str] = "owner.answer_invite"
    user_id: int
    accept: bool


#: Asked of every shard (conversation_id 0), as ConversationsOf.
@dataclass(frozen=True, slots=True)
class InvitesOf(OwnerCommand):
    """The invites to groups owned here that `user_id` has not answered. Answer:
    [[conversation_id, group name, invited_by, created_at], ...]."""

    METHOD: ClassVar[str] = "owner.invites_of"
    user_id: int


COMMANDS: dict[str, type[OwnerCommand]] = {
    command.METHOD: command for command in (
        Send, MarkRead, Acknowledge, OpenDirect, CreateGroup, AddMembers, RemoveMembers,
        Promote, Leave, Rename, SetGroupPhoto, View, History, Status, Typing, ReadLog,
        ConversationsOf, AnswerRequest, SetBlock, DirectStatus, Invite, AnswerInvite,
        InvitesOf, DeleteMessage, SetDisappearing, EraseMember, React, Edit, Pin,
        EditHistory)
}


# -- results -----------------------------------------------------------------------------

def send_result_to_wire(result: SendResult) -> list[int]:
    return [result.message_id, result.conversation_id, result.seq, result.ts]


def send_result_from_wire(data: Any) -> SendResult:
    message_id, conversation_id, seq, ts = data
    return SendResult(message_id, conversation_id, seq, ts)


def watermark_to_wire(mark: Watermark) -> list[int]:
    return [mark.delivered_seq, mark.read_seq]


def watermark_from_wire(data: Any) -> Watermark:
    delivered, read = data
    return Watermark(delivered, read)


def conversation_to_wire(conv: Conversation) -> dict[str, Any]:
    """A snapshot of the conversation (its members in join order, their watermarks; a
    direct chat's request and block state)."""
    wire: dict[str, Any] = {
        "id": conv.conversation_id, "kind": conv.kind, "name": conv.name,
        "created_by": conv.created_by, "created_at": conv.created_at,
        "head_seq": conv.head_seq, "last_ts": conv.last_ts, "photo": conv.photo_media_id,
        "disappearing_s": conv.disappearing_s, "anyone_sets_timer": conv.anyone_sets_timer,
        "members": [[user_id, member.role, member.joined_seq]
                    for user_id, member in conv.members.items()],
        "watermarks": [[user_id, mark.delivered_seq, mark.read_seq]
                       for user_id, mark in conv.watermarks.items()],
    }
    if conv.direct is not None:
        state = conv.direct
        wire["direct"] = [state.requested_by, state.status, list(state.blocked_by)]
    if conv.pins:
        wire["pins"] = list(conv.pins)
    if conv.encrypted:
        wire["encrypted"] = True
    if conv.uncounted is not None:
        # Unread counts skip reactions, edits and pins: how many lie above each member's
        # read mark, as of this snapshot's head (domain/unread.py).
        skips: dict[int, int] = {}
        for user_id in conv.members:
            read_seq = conv.watermark(user_id).read_seq
            if read_seq not in skips:
                skips[read_seq] = conv.uncounted.between(read_seq, conv.head_seq)
        above = [[read_seq, count] for read_seq, count in skips.items() if count]
        if above:
            wire["skips"] = above
    return wire


def conversation_from_wire(data: Any) -> Conversation:
    conv = Conversation(data["id"], data["kind"], data["name"], data["created_by"],
                        data["created_at"], data["head_seq"], data["last_ts"],
                        photo_media_id=int(data.get("photo") or 0),
                        disappearing_s=int(data.get("disappearing_s") or 0),
                        anyone_sets_timer=bool(data.get("anyone_sets_timer")),
                        encrypted=bool(data.get("encrypted")))
    conv.members = {user_id: Member(role, joined) for user_id, role, joined in data["members"]}
    conv.watermarks = {user_id: Watermark(delivered, read)
                       for user_id, delivered, read in data["watermarks"]}
    direct = data.get("direct")
    if direct is not None:
        requested_by, status, blocked_by = direct
        conv.direct = DirectState(conv.conversation_id, int(requested_by), str(status),
                                  [int(user) for user in blocked_by])
    conv.pins = [int(seq) for seq in data.get("pins") or ()]
    skips = data.get("skips")
    if skips:
        conv.uncounted = SnapshotSkips({int(read_seq): int(count)
                                        for read_seq, count in skips})
    return conv


def message_to_wire(message: Message) -> list[Any]:
    wire = [message.message_id, message.conversation_id, message.seq, message.sender_id,
            message.sender_device, message.client_msg_id, message.content_type,
            message.body, message.ts]
    rich = _rich_to_wire(message)
    if message.attachments or message.expires_at or rich:
        wire.append(list(message.attachments))
    if message.expires_at or rich:
        wire.append(message.expires_at)
    if rich:
        # A map at the end: a peer from before it reads the first eleven fields only.
        wire.append(rich)
    return wire


def _rich_to_wire(message: Message) -> dict[str, Any]:
    """Replies, mentions, forwards (issue 18): only the fields in use."""
    rich: dict[str, Any] = {}
    if message.reply_to:
        rich["reply_to"] = message.reply_to
        if message.quote is not None:
            rich["quote"] = message.quote
    if message.mentions:
        rich["mentions"] = list(message.mentions)
    if message.forwarded:
        rich["forwarded"] = message.forwarded
    return rich


def message_from_wire(data: Any) -> Message:
    message = Message(*data[:9])
    if len(data) > 9:
        object.__setattr__(message, "attachments", tuple(data[9]))
    if len(data) > 10:
        object.__setattr__(message, "expires_at", int(data[10]))
    if len(data) > 11 and isinstance(data[11], dict):
        rich = data[11]
        object.__setattr__(message, "reply_to", int(rich.get("reply_to", 0)))
        object.__setattr__(message, "quote", rich.get("quote"))
        object.__setattr__(message, "mentions", tuple(rich.get("mentions", ())))
        object.__setattr__(message, "forwarded", int(rich.get("forwarded", 0)))
    return message


def history_to_wire(page: HistoryPage) -> list[Any]:
    wire: list[Any] = [[message_to_wire(m) for m in page.messages], page.has_more]
    if page.annotations:
        wire.append([[seq, reactions_to_wire(note.reactions), note.body, note.edited_at]
                     for seq, note in page.annotations.items()])
    return wire


def history_from_wire(data: Any) -> HistoryPage:
    # (A third element only when the page has reactions or edits: a peer from before
    # them sends two.)
    notes = {int(seq): Annotation(reactions_from_wire(reactions), body, int(edited_at))
             for seq, reactions, body, edited_at in (data[2] if len(data) > 2 else ())}
    return HistoryPage([message_from_wire(m) for m in data[0]], bool(data[1]), notes)


def reactions_to_wire(summary: dict[str, tuple[int, bool]]) -> list[list[Any]]:
    return [[emoji, count, mine] for emoji, (count, mine) in summary.items()]


def reactions_from_wire(data: Any) -> dict[str, tuple[int, bool]]:
    return {str(emoji): (int(count), bool(mine)) for emoji, count, mine in data}


#: How each method's answer crosses the wire: (to_wire, from_wire).
RESULTS: dict[str, tuple[Any, Any]] = {
    Send.METHOD: (send_result_to_wire, send_result_from_wire),
    MarkRead.METHOD: (watermark_to_wire, watermark_from_wire),
    Acknowledge.METHOD: (lambda _: None, lambda _: None),
    Leave.METHOD: (lambda _: None, lambda _: None),
    DeleteMessage.METHOD: (lambda _: None, lambda _: None),
    EraseMember.METHOD: (lambda _: None, lambda _: None),
    **{method: (conversation_to_wire, conversation_from_wire) for method in (
        CreateGroup.METHOD, AddMembers.METHOD, RemoveMembers.METHOD, Promote.METHOD,
        Rename.METHOD, View.METHOD, SetDisappearing.METHOD)},
    SetGroupPhoto.METHOD: (
        lambda result: [conversation_to_wire(result[0]), result[1]],
        lambda data: (conversation_from_wire(data[0]), int(data[1]))),
    OpenDirect.METHOD: (
        lambda created: [conversation_to_wire(created.conversation), created.created],
        lambda data: Created(conversation_from_wire(data[0]), bool(data[1]))),
    History.METHOD: (history_to_wire, history_from_wire),
    Status.METHOD: (lambda rows: [list(row) for row in rows],
                    lambda data: [tuple(row) for row in data]),
    Typing.METHOD: (bool, bool),
    ReadLog.METHOD: (
        lambda result: [[message_to_wire(m) for m in result[0]], result[1]],
        lambda data: ([message_from_wire(m) for m in data[0]], data[1])),
    ConversationsOf.METHOD: (
        lambda page: [[[conversation_to_wire(conv), start] for conv, start in page[0]],
                      page[1]],
        lambda data: ([(conversation_from_wire(conv), start) for conv, start in data[0]],
                      data[1])),
    AnswerRequest.METHOD: (conversation_to_wire, conversation_from_wire),
    SetBlock.METHOD: (lambda _: None, lambda _: None),
    DirectStatus.METHOD: (list, list),
    Invite.METHOD: (list, list),
    AnswerInvite.METHOD: (
        lambda conv: None if conv is None else conversation_to_wire(conv),
        lambda data: None if data is None else conversation_from_wire(data)),
    InvitesOf.METHOD: (lambda rows: [list(row) for row in rows],
                       lambda data: [tuple(row) for row in data]),
    React.METHOD: (reactions_to_wire, reactions_from_wire),
    Edit.METHOD: (list, lambda data: (int(data[0]), int(data[1]))),
    Pin.METHOD: (lambda _: None, lambda _: None),
    EditHistory.METHOD: (lambda rows: [list(row) for row in rows],
                         lambda data: [(int(seq), body, int(ts)) for seq, body, ts in data]),
}
