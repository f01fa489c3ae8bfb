"""The REST API's request and response models: what each route takes and answers.

Each model both checks input and describes it in /openapi.json (web/schema.py). The
constraints follow domain/rules.py; tests/web/test_models.py checks that every value a
model accepts passes those rules too, so a request the published schema admits is never
refused for its form.

Names (display, status, group, device) are the one place JSON Schema falls short: the
server trims them, NFC-normalises them, counts the length after that and allows a
zero-width joiner only inside an emoji sequence. Their schema states what it can as
necessary conditions (no control or format characters, something besides spaces) and
names the rest with a `format` (`chatd.display-name` …) that docs/api.md defines; the
length limit is in the description, since a padded or decomposed name may be longer
before normalisation than after.
"""

from __future__ import annotations

import sys
import unicodedata
from dataclasses import dataclass, field
from typing import Annotated, Any

from chatd.domain import deletion, email_links, email_settings, replies, reports, rules
from chatd.domain.ids import MAX_ID
from chatd.domain.reactions import MAX_EMOJI_LENGTH
from chatd.services.exports import EXPORT_ID_PATTERN
from chatd.web.models_keys import VersionMap
from chatd.web.schema import (
    Boolean,
    Choice,
    Either,
    Id,
    IdList,
    Integer,
    Json,
    Limit,
    ListOf,
    Model,
    String,
)

# -- value kinds ---------------------------------------------------------------------------

ID = Id(MAX_ID)
MS = Integer(minimum=0, description="ms since the Unix epoch")
SEQ = Integer(minimum=0)
#: Largest value of 19 decimal digits, the most a seq in a URL may have.
MAX_19_DIGITS = 10**19 - 1
#: Ids one request may name at once.
MAX_IDS_PER_REQUEST = 1024


def _char_class(codepoints: list[int]) -> str:
    """`\\uXXXX` ranges for a character class (BMP code points only)."""
    ranges: list[list[int]] = []
    for point in sorted(codepoints):
        if ranges and point == ranges[-1][1] + 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    return "".join(f"\\u{low:04x}" if low == high else f"\\u{low:04x}-\\u{high:04x}"
                   for low, high in ranges)


#: What `str.strip()` removes around a name.
_SPACES = [point for point in range(sys.maxunicode + 1) if chr(point).isspace()]
#: The categories `rules.clean_text` refuses in a name (controls, format characters, line
#: and paragraph separators), BMP only, so that the pattern reads the same in every regex
#: dialect; the few refused characters beyond it (musical and tag format characters) are
#: left to the format rule. Surrogates never get this far (protocol/edge.py).
_REFUSED = [point for point in range(0x10000)
            if unicodedata.category(chr(point)) in ("Cc", "Cf", "Zl", "Zp")]
_JOINER = 0x200D
#: Anywhere: the end spaces (trimmed, so allowed even when refused inside), ...
_END = f"[{_char_class(_SPACES)}]*"
#: ... first and last characters: neither refused nor a space (and not the joiner) ...
_SOLID = f"[^{_char_class(sorted({*_REFUSED, *_SPACES}))}]"
#: ... and between them anything not refused, but the joiner (allowed inside emoji).
_INNER = f"[^{_char_class([point for point in _REFUSED if point != _JOINER])}]*"
_NON_BLANK = f"{_END}{_SOLID}(?:{_INNER}{_SOLID})?{_END}"


def _name(field: str, max_length: int, what: str, *, empty: bool = False,
          blank: bool = False) -> String:
    """A name kind. `empty`: "" is allowed (it means a default); `blank`: so is a value
    that trims to nothing."""
    pattern = f"^{_END}(?:{_SOLID}(?:{_INNER}{_SOLID})?{_END})?$" if blank else (
        f"^(?:{_NON_BLANK})?$" if empty else f"^{_NON_BLANK}$")
    return String(
        pattern=pattern, format=f"chatd.{field}",
        rule="must not be empty or contain control characters, invisible or bidi format "
             "characters or line breaks",
        description=f"{what}: trimmed and NFC-normalised, then at most {max_length} "
                    f"characters{'' if blank else ' (not blank)'}; no control characters, "
                    "invisible or bidi format characters or line breaks (a zero-width "
                    "joiner only inside an emoji sequence)")


HANDLE = String(
    pattern=r"^(?:\+[1-9][0-9]{6,14}|[A-Za-z0-9_.]{3,32})$",
    rule="a username is 3 to 32 characters of a-z, 0-9, '_' and '.' "
         "(or give a phone number in E.164 form, like +14155550123)",
    description="a username ([a-z0-9_.]{3,32}, compared case-insensitively) or an E.164 "
                "phone number")
PASSWORD = String(min_length=Limit.MIN_PASSWORD_LENGTH, max_length=rules.MAX_PASSWORD_LENGTH)
DISPLAY_NAME = _name("display-name", rules.MAX_DISPLAY_NAME, "the name shown to others")
STATUS = _name("status", rules.MAX_STATUS_TEXT, "a status line", empty=True, blank=True)
GROUP_NAME = _name("group-name", rules.MAX_GROUP_NAME, "the group's name")
DEVICE_NAME = _name("device-name", rules.MAX_DEVICE_NAME,
                    "this device's name ('unnamed device' when empty)", empty=True)
CLIENT_MSG_ID = String(
    pattern=r"^[A-Za-z0-9._:-]{1,64}$",
    rule="1 to 64 characters of A-Z, a-z, 0-9, '.', '_', ':', '-'",
    description="chosen by the client; a resend with the same one returns the first answer")
CONTENT_TYPE = String(
    pattern=r"^[a-z0-9][a-z0-9.+-]{0,62}/[a-z0-9][a-z0-9.+-]{0,62}$",
    rule="must look like 'type/subtype' in lower case, e.g. 'text/plain'",
    reserved=rules.RESERVED_CONTENT_TYPES, reserved_rule="is reserved for the server",
    description="type/subtype; text/* bodies are text, every other type's are base64")
#: CONTENT_TYPE narrowed to text/* (whose bodies are text).
TEXT_CONTENT_TYPE = String(pattern=r"^text/[a-z0-9][a-z0-9.+-]{0,62}$")
#: Standard base64 with its padding, as the server decodes it.
BASE64 = String(pattern=r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
MESSAGE_BODY = String(description="the text for text/* content types, base64 (with padding) "
                                  "of the bytes for every other type")
USER_IDS = IdList(ID, min_items=1, max_items=MAX_IDS_PER_REQUEST)
#: One emoji (domain/reactions.py; the `chatd.emoji` format of docs/api.md): the pattern
#: only bounds it, the emoji library's data decides.
EMOJI = String(min_length=1, max_length=MAX_EMOJI_LENGTH, format="chatd.emoji",
               code="invalid_emoji",
               description="exactly one emoji: one grapheme cluster (a skin tone or "
                           "zero-width-joiner sequence is one emoji)")
SHARD_NAME = String(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                    rule="a shard name of the cluster",
                    description="a shard's name; a range is named after its natural owner")

#: Path parameters, by name: every route that has one takes it in this form.
PATH_PARAMETERS = {
    "conversation_id": ID,
    "user_id": ID,
    "device_id": ID,
    "seq": Integer(minimum=0, maximum=MAX_19_DIGITS),
    "media_id": ID,
    "report_id": ID,
    "export_id": String(pattern=EXPORT_ID_PATTERN, rule="an export id (35 hex digits)",
                        description="an export id, as POST /me/export answered it"),
    "emoji": EMOJI,
    "subscription_id": ID,  # push subscriptions (web/routes_push.py)
}

# -- request bodies and queries ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Promote(Model):
    range: Annotated[str, SHARD_NAME]


@dataclass(frozen=True, slots=True)
class Register(Model):
    handle: Annotated[str, HANDLE]
    password: Annotated[str, PASSWORD]
    display_name: Annotated[str, DISPLAY_NAME]


@dataclass(frozen=True, slots=True)
class Login(Model):
    # Any text: a malformed handle gets the same 401 as a wrong password.
    handle: Annotated[str, String(description="as registered")]
    password: str
    device_name: Annotated[str | None, DEVICE_NAME] = None


@dataclass(frozen=True, slots=True)
class ProfileChange(Model):
    description = "fields left out (or null) stay as they are"
    closed = True

    display_name: Annotated[str | None, DISPLAY_NAME] = None
    status: Annotated[str | None, STATUS] = None
    hide_last_seen: Annotated[bool | None, Boolean(
        description="presence shows offline without a time")] = None
    read_receipts: Annotated[bool | None, Boolean(
        description="off: others are not told when you read, nor you when they do")] = None
    photo_media_id: Annotated[int | None, ID] = None
    remove_photo: Annotated[bool | None, Boolean(description="true: no photo")] = None


#: Who sees last seen, or status text and photo (docs/privacy.md).
VISIBILITY = String(pattern=r"^(?:everyone|contacts|nobody)$",
                    rule="one of everyone, contacts, nobody",
                    description="everyone, contacts (accepted direct chats) or nobody")
GROUPS_ADD = String(pattern=r"^(?:everyone|contacts)$", rule="one of everyone, contacts",
                    description="who may add you to a group; the others send an invite")


@dataclass(frozen=True, slots=True)
class PrivacyChange(Model):
    description = "fields left out (or null) stay as they are"
    closed = True

    last_seen: Annotated[str | None, VISIBILITY] = None
    profile: Annotated[str | None, VISIBILITY] = None
    groups_add: Annotated[str | None, GROUPS_ADD] = None
    read_receipts: Annotated[bool | None, Boolean(
        description="off: others are not told when you read, nor you when they do")] = None


@dataclass(frozen=True, slots=True)
class ConversationsQuery(Model):
    requests: Annotated[int | None, Integer(
        minimum=0, maximum=1, description="1: the message requests you received and have "
                                          "not answered, instead of your conversations")] = None


@dataclass(frozen=True, slots=True)
class FindUser(Model):
    handle: Annotated[str, HANDLE]


@dataclass(frozen=True, slots=True)
class OpenDirect(Model):
    user_id: Annotated[int, ID]
    #: End-to-end encrypted: true or false when creating it (an existing one must
    #: match: 409 encryption_mismatch); left out, it is taken as it is (new: false).
    encrypted: bool | None = None


@dataclass(frozen=True, slots=True)
class MarkRead(Model):
    seq: Annotated[int, SEQ]


@dataclass(frozen=True, slots=True)
class CreateGroup(Model):
    name: Annotated[str, GROUP_NAME]
    members: Annotated[list[int], IdList(ID, min_items=0, max_items=MAX_IDS_PER_REQUEST)]
    #: End-to-end encrypted, for ever: only ciphertext content types are accepted.
    encrypted: bool = False


@dataclass(frozen=True, slots=True)
class RenameGroup(Model):
    description = "a new name, a photo (an uploaded image), or both"

    name: Annotated[str | None, GROUP_NAME] = None
    photo_media_id: Annotated[int | None, ID] = None
    remove_photo: Annotated[bool | None, Boolean(description="true: no photo")] = None


@dataclass(frozen=True, slots=True)
class DeleteMessage(Model):
    """`{"for": "everyone"}`: a tombstone replaces the message for every member (its
    sender within limits.delete_window_s, a group admin at any time); `{"for": "me"}`:
    hidden from your own history and sync only."""

    for_: Annotated[str, String(pattern="^(?:everyone|me)$", rule="'everyone' or 'me'",
                                description="whose history loses the message")]


@dataclass(frozen=True, slots=True)
class ConversationChange(Model):
    description = "fields left out (or null) stay as they are"
    closed = True

    disappearing_s: Annotated[int | None, Integer(
        minimum=0, maximum=7_776_000, code="invalid_field",
        choices=deletion.TIMERS,
        description="disappearing messages: messages sent from now on expire this many "
                    "seconds after sending; one of 0 (off), 86400, 604800, 7776000")] = None
    anyone_sets_timer: Annotated[bool | None, Boolean(
        description="groups, admins only: every member may change the timer")] = None


@dataclass(frozen=True, slots=True)
class UserIds(Model):
    user_ids: Annotated[list[int], USER_IDS]


#: Attachments one message may carry (services/media.py MAX_ATTACHMENTS).
MAX_ATTACHMENTS = 16


@dataclass(frozen=True, slots=True)
class AttachmentRef(Model):
    """An uploaded media to carry in a message (POST /media/upload gave its id)."""

    media_id: Annotated[int, ID]
    #: A media of your own shown as its thumbnail (for video, documents, opaque media).
    thumbnail_media_id: Annotated[int | None, ID] = None


REPLY_TO = Integer(minimum=0, maximum=MAX_19_DIGITS, code="invalid_field",
                   description="the seq of the message this replies to (you must be able "
                               "to read it)")
MENTIONS = IdList(ID, min_items=0, max_items=replies.MAX_MENTIONS)


@dataclass(frozen=True, slots=True)
class SendMessage(Model):
    constraints = (Either("body", "bodies of content types other than text/* must be base64",
                          (("content_type", TEXT_CONTENT_TYPE), ("body", BASE64))),)

    conversation_id: Annotated[int, ID]
    client_msg_id: Annotated[str, CLIENT_MSG_ID]
    content_type: Annotated[str, CONTENT_TYPE]
    body: Annotated[str, MESSAGE_BODY]
    attachments: Annotated[list[AttachmentRef] | None,
                           ListOf(AttachmentRef, max_items=MAX_ATTACHMENTS)] = None
    reply_to: Annotated[int | None, REPLY_TO] = None
    mentions: Annotated[list[int] | None, MENTIONS] = None
    #: The recipients' device-list versions the sender encrypted for (POST /keys/query):
    #: a stale one is 409 device_list_stale.
    device_list_version: Annotated[dict[int, int] | None, VersionMap()] = None


@dataclass(frozen=True, slots=True)
class MessageRef(Model):
    """A message: its conversation and seq."""

    conversation_id: Annotated[int, ID]
    seq: Annotated[int, Integer(minimum=1, maximum=MAX_19_DIGITS, code="invalid_field")]


@dataclass(frozen=True, slots=True)
class Forward(Model):
    description = ("copy a message you can read into up to 5 conversations you are in "
                   "(one at a time for a message forwarded many times)")

    from_: MessageRef
    to: Annotated[list[int], IdList(ID, min_items=1, max_items=replies.MAX_FORWARD_TARGETS)]
    #: Each copy's client_msg_id (one is made when left out): a retry gives the same copies.
    client_msg_id: Annotated[str | None, CLIENT_MSG_ID] = None


@dataclass(frozen=True, slots=True)
class React(Model):
    """Your reaction to a message: it replaces the one you had."""

    emoji: Annotated[str, EMOJI]


@dataclass(frozen=True, slots=True)
class EditMessage(Model):
    """The new body: text for a text/* message, base64 (with padding) of the new bytes for
    an opaque one (an end-to-end encrypted text's new ciphertext)."""

    body: Annotated[str, MESSAGE_BODY]


@dataclass(frozen=True, slots=True)
class HistoryQuery(Model):
    after: Annotated[int | None, Integer(
        minimum=0, maximum=MAX_19_DIGITS, description="the oldest page after this seq")] = None
    before: Annotated[int | None, Integer(
        minimum=0, maximum=MAX_19_DIGITS, description="the newest page before this seq")] = None
    limit: Annotated[int | None, Integer(
        minimum=1, maximum=Limit.HISTORY_PAGE_MAX, code="bad_request",
        description="messages in the page (default 50)")] = None


# -- responses -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorDetail(Model):
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ErrorReply(Model):
    """Every error: `{"error": {"code", "message"}}` (chatd.errors)."""

    error: ErrorDetail


@dataclass(frozen=True, slots=True)
class PeerState(Model):
    shard: str
    #: Whether this shard's mesh link to it is up.
    up: bool


@dataclass(frozen=True, slots=True)
class Health(Model):
    status: str
    shard: str
    version: str
    #: The other shards of the cluster (none for one shard).
    peers: list[PeerState]


@dataclass(frozen=True, slots=True)
class PublicUser(Model):
    user_id: Annotated[int, ID]
    handle: str
    display_name: str
    status: str
    #: Left out when the user has no photo (GET /media/{id}/thumbnail?size=96 shows it).
    photo_media_id: Annotated[int | None, ID] = field(default=None, kw_only=True)
    #: When their last connection closed; left out unless their `last_seen` setting
    #: shows it to you (docs/privacy.md).
    last_seen: Annotated[int | None, MS] = field(default=None, kw_only=True)

    def to_json(self) -> dict[str, Any]:
        data = Model.to_json(self)
        if self.photo_media_id is None:
            del data["photo_media_id"]
        if self.last_seen is None:
            del data["last_seen"]
        return data


@dataclass(frozen=True, slots=True)
class PrivacySettings(Model):
    last_seen: Annotated[str, Choice(("everyone", "contacts", "nobody"))]
    profile: Annotated[str, Choice(("everyone", "contacts", "nobody"))]
    groups_add: Annotated[str, Choice(("everyone", "contacts"))]
    read_receipts: bool


@dataclass(frozen=True, slots=True)
class Block(Model):
    user_id: Annotated[int, ID]
    blocked_at: Annotated[int, MS]


@dataclass(frozen=True, slots=True)
class Blocks(Model):
    blocks: list[Block]


@dataclass(frozen=True, slots=True)
class Invite(Model):
    conversation_id: Annotated[int, ID]
    name: str
    invited_by: Annotated[int, ID]
    created_at: Annotated[int, MS]


@dataclass(frozen=True, slots=True)
class Invites(Model):
    invites: list[Invite]


@dataclass(frozen=True, slots=True)
class OwnUser(PublicUser):
    created_at: Annotated[int, MS]
    hide_last_seen: bool
    read_receipts: bool


@dataclass(frozen=True, slots=True)
class LoginResult(Model):
    token: str
    user_id: Annotated[int, ID]
    device_id: Annotated[int, ID]
    expires_at: Annotated[int, MS]


@dataclass(frozen=True, slots=True)
class Device(Model):
    device_id: Annotated[int, ID]
    name: str
    created_at: Annotated[int, MS]
    current: bool


@dataclass(frozen=True, slots=True)
class Devices(Model):
    devices: list[Device]


@dataclass(frozen=True, slots=True)
class Member(Model):
    user_id: Annotated[int, ID]
    role: Annotated[str, Choice(("admin", "member"))]


@dataclass(frozen=True, slots=True)
class Receipts(Model):
    delivered_seq: Annotated[int, SEQ]
    read_seq: Annotated[int, SEQ]


@dataclass(frozen=True, slots=True)
class Conversation(Model):
    conversation_id: Annotated[int, ID]
    kind: Annotated[str, Choice(("direct", "group"))]
    name: str
    created_by: Annotated[int, ID]
    created_at: Annotated[int, MS]
    last_seq: Annotated[int, SEQ]
    last_activity: Annotated[int, MS]
    unread: Annotated[int, Integer(minimum=0)]
    receipts: Receipts
    members: list[Member]
    #: A group's photo; left out when it has none.
    photo_media_id: Annotated[int | None, ID] = None
    #: A direct chat that is a message request, as you see it: "received" (yours to
    #: accept or decline), "sent" (not accepted yet); left out once accepted.
    request: Annotated[str | None, Choice(("received", "sent"))] = None
    #: True when you block the other person of this direct chat; left out otherwise.
    blocked: bool | None = None
    #: Disappearing messages: seconds after which new messages expire (0: off).
    disappearing_s: Annotated[int, Integer(minimum=0)] = 0
    #: Whether every member may change the timer (a group's choice; direct: always).
    anyone_sets_timer: bool = False
    #: The pinned messages' seqs, in the order they were pinned (at most 3).
    pins: Annotated[list[int], Json({"type": "array", "items": {"type": "integer",
                                                                 "minimum": 0}})] = \
        field(default_factory=list)
    #: End-to-end encrypted (chosen at creation, never changed): only
    #: application/vnd.chatd.olm, .megolm and .encrypted-media messages.
    encrypted: bool = False

    def to_json(self) -> dict[str, Any]:
        data = Model.to_json(self)
        for name in ("photo_media_id", "request", "blocked"):
            if getattr(self, name) is None:  # (an id's dump of None is no None)
                del data[name]
        return data


@dataclass(frozen=True, slots=True)
class Conversations(Model):
    conversations: list[Conversation]


@dataclass(frozen=True, slots=True)
class Attachment(Model):
    """A media a message carries, as the server recorded it when the message was sent."""

    media_id: Annotated[int, ID]
    kind: Annotated[str, Choice(("image", "video", "audio", "file"))]
    content_type: str
    size: Annotated[int, Integer(minimum=0)]
    sha256: str
    filename: str
    #: Pixels as displayed (EXIF orientation applied); 0 when not an image.
    width: Annotated[int, Integer(minimum=0)]
    height: Annotated[int, Integer(minimum=0)]
    #: Sizes served by GET /media/{media_id}/thumbnail?size=
    thumbnails: Annotated[list[int], Json({"type": "array", "items": {"type": "integer"}})]
    #: The sender's own thumbnail, a media of its own; left out when none was sent.
    thumbnail_media_id: Annotated[int | None, ID] = None

    def to_json(self) -> dict[str, Any]:
        data = Model.to_json(self)
        if self.thumbnail_media_id is None:
            del data["thumbnail_media_id"]
        return data


#: A message's reactions: emoji -> how many reacted with it and whether you did.
REACTIONS = Json({"type": "object", "additionalProperties": {
    "type": "object", "required": ["count", "me"],
    "properties": {"count": {"type": "integer", "minimum": 1}, "me": {"type": "boolean"}}}})


@dataclass(frozen=True, slots=True)
class Message(Model):
    message_id: Annotated[int, ID]
    conversation_id: Annotated[int, ID]
    seq: Annotated[int, SEQ]
    sender_id: Annotated[int, ID]
    client_msg_id: str
    content_type: str
    body: Annotated[str | dict[str, Any], Json({
        "description": "text for text/*, base64 for other types, an object for "
                       "chatd/system entries (docs/api.md)",
        "anyOf": [{"type": "string"}, {"type": "object"}]})]
    ts: Annotated[int, MS]
    #: Left out when the message carries none.
    attachments: list[Attachment] | None = None
    #: When a disappearing message expires (ms); left out when it does not.
    expires_at: Annotated[int | None, MS] = None
    #: History only: emoji -> {"count", "me"}; left out when it has none.
    reactions: Annotated[dict[str, Any] | None, REACTIONS] = None
    #: History only: when it was last edited (ms; `body` is then the latest); left out
    #: when never edited.
    edited_at: Annotated[int | None, MS] = None
    #: Replies, mentions, forwards (domain/replies.py); each left out when unused.
    reply_to: Annotated[int | None, SEQ] = None
    quote: Quote | None = None
    mentions: Annotated[list[int] | None, MENTIONS] = None
    forwarded: bool | None = None
    forwarded_many: bool | None = None

    def to_json(self) -> dict[str, Any]:
        data = Model.to_json(self)
        for name in ("attachments", "reactions", "reply_to", "quote", "mentions",
                     "forwarded", "forwarded_many"):
            if not getattr(self, name):
                del data[name]
        for name in ("expires_at", "edited_at"):
            if getattr(self, name) is None:
                del data[name]
        return data


@dataclass(frozen=True, slots=True)
class Quote(Model):
    """What a reply shows of the message it answers, as it reads now (made by the
    server at each read, never stored)."""

    sender_id: Annotated[int, ID]
    content_type: str
    #: The first 100 characters of a text body; left out for other bodies.
    text: str | None = None
    #: The message was deleted (or expired) since; left out otherwise.
    deleted: bool | None = None

    def to_json(self) -> dict[str, Any]:
        data = Model.to_json(self)
        for name in ("text", "deleted"):
            if getattr(self, name) is None:
                del data[name]
        return data


@dataclass(frozen=True, slots=True)
class ForwardResult(Model):
    """One target of a forward: its copy (seq, message_id, ts) or why there is none."""

    conversation_id: Annotated[int, ID]
    message_id: Annotated[int | None, ID] = None
    seq: Annotated[int | None, SEQ] = None
    ts: Annotated[int | None, MS] = None
    error: ErrorDetail | None = None

    def to_json(self) -> dict[str, Any]:
        data = Model.to_json(self)
        for name in ("message_id", "seq", "ts", "error"):
            if getattr(self, name) is None:
                del data[name]
        return data


@dataclass(frozen=True, slots=True)
class Forwarded(Model):
    results: list[ForwardResult]


@dataclass(frozen=True, slots=True)
class History(Model):
    messages: list[Message]
    has_more: bool


@dataclass(frozen=True, slots=True)
class ReactionSummary(Model):
    conversation_id: Annotated[int, ID]
    seq: Annotated[int, SEQ]
    #: emoji -> {"count", "me"} ({} when nobody reacts any more).
    reactions: Annotated[dict[str, Any], REACTIONS]


@dataclass(frozen=True, slots=True)
class Edited(Model):
    #: The seq of the `chatd/edit` entry.
    seq: Annotated[int, SEQ]
    edited_at: Annotated[int, MS]


@dataclass(frozen=True, slots=True)
class EditEntry(Model):
    #: The original's seq for the first, each edit entry's after it.
    seq: Annotated[int, SEQ]
    body: Annotated[str, MESSAGE_BODY]
    ts: Annotated[int, MS]


@dataclass(frozen=True, slots=True)
class EditHistory(Model):
    """Every body a message has had, oldest first (the original first); empty for a
    message deleted since."""

    edits: list[EditEntry]


@dataclass(frozen=True, slots=True)
class SendResult(Model):
    message_id: Annotated[int, ID]
    conversation_id: Annotated[int, ID]
    seq: Annotated[int, SEQ]
    ts: Annotated[int, MS]


@dataclass(frozen=True, slots=True)
class MemberStatus(Model):
    user_id: Annotated[int, ID]
    delivered: bool
    #: null where read receipts are not shared (that member's choice or yours).
    read: bool | None


@dataclass(frozen=True, slots=True)
class MessageStatus(Model):
    conversation_id: Annotated[int, ID]
    seq: Annotated[int, SEQ]
    members: list[MemberStatus]


# -- media -------------------------------------------------------------------------------------

_SHA256 = String(pattern="^[0-9a-f]{64}$", description="hex")


@dataclass(frozen=True, slots=True)
class ThumbnailInfo(Model):
    size: Annotated[int, Integer(minimum=0)]
    content_type: str
    width: Annotated[int, Integer(minimum=0)]
    height: Annotated[int, Integer(minimum=0)]


@dataclass(frozen=True, slots=True)
class Uploaded(Model):
    media_id: Annotated[int, ID]
    url: str
    sha256: str
    size: Annotated[int, Integer(minimum=0)]
    content_type: str
    filename: str
    width: Annotated[int, Integer(minimum=0)]
    height: Annotated[int, Integer(minimum=0)]
    thumbnails: list[ThumbnailInfo]


@dataclass(frozen=True, slots=True)
class Usage(Model):
    used_bytes: Annotated[int, Integer(minimum=0)]
    quota_bytes: Annotated[int, Integer(minimum=0)]


@dataclass(frozen=True, slots=True)
class LinkRequest(Model):
    ttl_s: Annotated[int, Integer(minimum=1, maximum=Limit.MAX_LINK_TTL,
                                  description="seconds the link works (media.max_link_ttl)")]


@dataclass(frozen=True, slots=True)
class Link(Model):
    url: str
    expires_at: Annotated[int, MS]


@dataclass(frozen=True, slots=True)
class Quarantine(Model):
    sha256: Annotated[str, _SHA256]
    reason: Annotated[str, String(max_length=500)] = ""


@dataclass(frozen=True, slots=True)
class DownloadQuery(Model):
    """The signed-link parameters (POST /media/{media_id}/link makes them)."""

    u: Annotated[str | None, String(max_length=20)] = None
    e: Annotated[str | None, String(max_length=20)] = None
    sig: Annotated[str | None, String(max_length=64)] = None


@dataclass(frozen=True, slots=True)
class ThumbnailQuery(DownloadQuery):
    size: Annotated[int, Integer(minimum=0, maximum=10_000,
                                 description="96, 320 or 640")] = 320


# -- reports and abuse detection (web/routes_reports.py, web/routes_moderation.py) ------------

_STRINGS = Json({"type": "array", "items": {"type": "string"}})


def _without_none(data: dict[str, Any], value: object, name: str) -> dict[str, Any]:
    if value is None:
        del data[name]
    return data

REPORT_REASON = String(pattern=f"^(?:{'|'.join(reports.REASONS)})$",
                       rule=f"must be one of {', '.join(reports.REASONS)}",
                       code="invalid_field", description="why: " + ", ".join(reports.REASONS))
REPORT_NOTE = String(max_length=reports.MAX_NOTE, code="invalid_field",
                     description="the reporter's own words (needed with reason 'other')")
ADMIN_NOTE = String(max_length=reports.MAX_ADMIN_NOTE, code="invalid_field",
                    description="the admin's note, kept with the change")
REPORTED_SEQ = Integer(minimum=1, maximum=MAX_19_DIGITS,
                       description="the message reported; its sender is the user reported")
PAGE_LIMIT = Integer(minimum=1, maximum=200, code="bad_request",
                     description="items in the page (default 50)")


@dataclass(frozen=True, slots=True)
class FileReport(Model):
    description = "a message (seq) or a member (user_id) of a conversation you are in"
    constraints = (
        Either("seq", "name a message (seq) or a member (user_id) to report",
               (("seq", REPORTED_SEQ), ("user_id", ID)), code="missing_field"),
        Either("note", "say what is wrong (note) when the reason is 'other'",
               (("reason", String(pattern="^(?:spam|abuse|harassment|illegal)$")),
                ("note", String(pattern=r"\S", max_length=reports.MAX_NOTE)))),
    )

    conversation_id: Annotated[int, ID]
    reason: Annotated[str, REPORT_REASON]
    seq: Annotated[int | None, REPORTED_SEQ] = None
    user_id: Annotated[int | None, ID] = None
    note: Annotated[str | None, REPORT_NOTE] = None
    evidence: Annotated[str | None, String(
        description="plaintext of what is reported, as your client shows it (the server "
                    "cannot read end-to-end encrypted chats); stored as given; at most "
                    "abuse.max_evidence_bytes bytes of UTF-8 (64 KiB; "
                    "413 evidence_too_large)")] = None


@dataclass(frozen=True, slots=True)
class ReportFiled(Model):
    report_id: Annotated[int, ID]


@dataclass(frozen=True, slots=True)
class Report(Model):
    report_id: Annotated[int, ID]
    reported_id: Annotated[int, ID]
    reporter_id: Annotated[int, ID]
    conversation_id: Annotated[int, ID]
    #: 0: a member was reported without a message.
    seq: Annotated[int, SEQ]
    reason: Annotated[str, Choice(reports.REASONS)]
    note: str
    evidence: str
    created_at: Annotated[int, MS]
    #: The message as the server holds it ("" without one); its text only for text/*.
    content_type: str
    message_text: str
    status: Annotated[str, Choice(reports.STATUSES)]
    resolved_at: Annotated[int, Integer(minimum=0, description="ms; 0 while open")]
    action: Annotated[str, String(description="the resolution: " + ", ".join(reports.ACTIONS)
                                  + " (\"\" while open)")]
    resolution_note: str
    #: The message's id; left out when no message was reported.
    message_id: Annotated[int | None, ID] = None

    def to_json(self) -> dict[str, Any]:
        return _without_none(Model.to_json(self), self.message_id, "message_id")


@dataclass(frozen=True, slots=True)
class Reports(Model):
    reports: list[Report]
    #: Shards that did not answer: their reports are missing from this page.
    unreachable: Annotated[list[str], _STRINGS]
    #: Give it as ?after= for the next page; left out at the end.
    next_after: Annotated[int | None, ID] = None

    def to_json(self) -> dict[str, Any]:
        return _without_none(Model.to_json(self), self.next_after, "next_after")


@dataclass(frozen=True, slots=True)
class ReportsQuery(Model):
    status: Annotated[str, String(pattern=f"^(?:{'|'.join(reports.STATUSES)})$",
                                  rule="must be open or resolved")] = "open"
    after: Annotated[int | None, ID] = None
    limit: Annotated[int | None, PAGE_LIMIT] = None


@dataclass(frozen=True, slots=True)
class ResolveReport(Model):
    action: Annotated[str, String(pattern=f"^(?:{'|'.join(reports.ACTIONS)})$",
                                  rule="must be one of " + ", ".join(reports.ACTIONS),
                                  code="invalid_field",
                                  description="dismiss (unfounded: stops counting), uphold, "
                                              "limit or unlimit the reported account")]
    note: Annotated[str | None, ADMIN_NOTE] = None


@dataclass(frozen=True, slots=True)
class AbuseAccount(Model):
    user_id: Annotated[int, ID]
    handle: str
    #: The score now (docs/privacy.md has the rule), and each term that scored.
    score: Annotated[int, Integer(minimum=0)]
    reasons: Annotated[list[str], _STRINGS]
    limited: bool
    limited_at: Annotated[int, Integer(minimum=0, description="ms; 0 when not limited")]
    limited_by: Annotated[str, String(description="score, admin, or \"\"")]
    limit_reason: str
    requests_opened: Annotated[int, Integer(minimum=0)]
    requests_accepted: Annotated[int, Integer(minimum=0)]
    requests_declined: Annotated[int, Integer(minimum=0)]
    requests_blocked: Annotated[int, Integer(minimum=0)]
    reporters: Annotated[int, Integer(minimum=0)]
    cleared_at: Annotated[int, Integer(minimum=0, description="ms of the last unlimit")]
    note: str


@dataclass(frozen=True, slots=True)
class AbuseQueue(Model):
    accounts: list[AbuseAccount]
    unreachable: Annotated[list[str], _STRINGS]
    #: Give it as ?after= for the next page; left out at the end.
    next_after: Annotated[int | None, ID] = None

    def to_json(self) -> dict[str, Any]:
        return _without_none(Model.to_json(self), self.next_after, "next_after")


@dataclass(frozen=True, slots=True)
class PageQuery(Model):
    after: Annotated[int | None, ID] = None
    limit: Annotated[int | None, PAGE_LIMIT] = None


@dataclass(frozen=True, slots=True)
class AdminNote(Model):
    note: Annotated[str | None, ADMIN_NOTE] = None


# -- export and erase (GDPR), the operator's account routes -----------------------------------

ACCOUNT_STATUS = Choice(("active", "deactivated", "erasing", "erased"))


@dataclass(frozen=True, slots=True)
class EraseAccount(Model):
    password: Annotated[str, String(description="your password, checked as at login")]
    erase: Annotated[bool, Boolean(description="must be true: erasing cannot be undone",
                                   only=True)]


@dataclass(frozen=True, slots=True)
class EraseResult(Model):
    #: "erasing": steps are left for a shard that could not be reached now; they are
    #: finished in the background (docs/privacy.md).
    status: Annotated[str, Choice(("erased", "erasing"))]


@dataclass(frozen=True, slots=True)
class ExportStatus(Model):
    export_id: str
    status: Annotated[str, Choice(("pending",))]


@dataclass(frozen=True, slots=True)
class AdminUsersQuery(Model):
    handle: Annotated[str | None, String(
        max_length=32, description="only handles that start with this (any case)")] = None
    after: Annotated[int | None, ID] = None
    limit: Annotated[int | None, Integer(minimum=1, maximum=1000,
                                         description="users in the page (default 100)")] = None


@dataclass(frozen=True, slots=True)
class AdminUser(Model):
    user_id: Annotated[int, ID]
    #: Empty once erased.
    handle: str
    display_name: str
    status_text: str
    created_at: Annotated[int, MS]
    status: Annotated[str, ACCOUNT_STATUS]
    #: ms, 0 when not.
    deactivated_at: Annotated[int, MS]
    erasing_since: Annotated[int, MS]
    erased_at: Annotated[int, MS]


@dataclass(frozen=True, slots=True)
class AdminUsers(Model):
    users: list[AdminUser]
    #: Give as ?after= for the next page; null when there is none.
    next_after: Annotated[int | None, ID] = None


@dataclass(frozen=True, slots=True)
class AdminDevice(Model):
    device_id: Annotated[int, ID]
    name: str
    created_at: Annotated[int, MS]


@dataclass(frozen=True, slots=True)
class AdminUserDetail(Model):
    user: AdminUser
    devices: list[AdminDevice]
    conversations: Annotated[int, Integer(minimum=0)]
    uploads: Annotated[int, Integer(minimum=0)]
    upload_bytes: Annotated[int, Integer(minimum=0)]
    #: Shards that could not be asked: the counts leave out what they hold.
    unreachable: Annotated[list[str], Json({"type": "array", "items": {"type": "string"}})]


# -- email notifications (web/routes_email.py) -------------------------------------------------

_ADDRESS_INNER = email_settings.ADDRESS_PATTERN[1:-1]


@dataclass(frozen=True, slots=True)
class NotificationSettings(Model):
    #: The verified address digests go to (null: none yet).
    email: Annotated[str | None, String(max_length=email_settings.ADDRESS_MAX)] = None
    #: An address waiting for its verification link to be followed.
    pending_email: Annotated[str | None, String(max_length=email_settings.ADDRESS_MAX)] = None
    email_enabled: bool = False
    email_delay_s: Annotated[int, Integer(minimum=email_settings.MIN_DELAY_S,
                                          maximum=email_settings.MAX_DELAY_S)] = \
        email_settings.DEFAULT_DELAY_S
    #: Whether this server sends email at all (its operator configured SMTP).
    email_available: bool = False


@dataclass(frozen=True, slots=True)
class NotificationChange(Model):
    description = "fields left out (or null) stay as they are"
    closed = True

    email: Annotated[str | None, String(
        pattern=f"^(?:{_ADDRESS_INNER})?$", max_length=email_settings.ADDRESS_MAX,
        code="invalid_field",
        rule="is not an address this server sends to (ASCII, name@host.domain)",
        description="a new address (a verification link is mailed to it; digests go to "
                    "it once followed); \"\" removes the address")] = None
    email_enabled: Annotated[bool | None, Boolean(
        description="digests of unread messages, once the address is verified")] = None
    email_delay_s: Annotated[int | None, Integer(
        minimum=email_settings.MIN_DELAY_S, maximum=email_settings.MAX_DELAY_S,
        code="invalid_field",
        description="seconds a message stays unread before it is mailed")] = None


@dataclass(frozen=True, slots=True)
class EmailLinkQuery(Model):
    """A signed link from a notification mail."""

    token: Annotated[str, String(pattern=email_links.TOKEN_PATTERN, max_length=60,
                                 code="invalid_link")]
