"""What route handlers answer (`Reply`) and the domain models as response models
(web/models.py). Ids leave as decimal strings (JavaScript numbers stop at 2**53); times
are integers in ms since the Unix epoch."""

from __future__ import annotations

import base64
import enum
from typing import Any, TypeAlias

from quart import Response

from chatd.domain import replies
from chatd.domain.media import MediaRecord
from chatd.domain.models import (
    Body,
    Conversation,
    Device,
    HistoryPage,
    Message,
    SendResult,
    User,
    Watermark,
)
from chatd.domain.targets import Annotation
from chatd.services.accounts import LoginResult
from chatd.services.forwarding import ForwardOutcome
from chatd.web import models
from chatd.web.schema import Model


class NoContent(enum.Enum):
    """The answer of a route that has nothing to say: 204 with no body."""

    NO_CONTENT = 204


NO_CONTENT = NoContent.NO_CONTENT

#: What a route handler returns: a response model (200), a model and its status, no
#: content (204), or a response it built itself (text, a cached document). The route's
#: declaration (web/api.py) says which of these it may answer, and the answer is checked
#: against it.
Reply: TypeAlias = Model | tuple[Model, int] | NoContent | Response


def public_user(user: User, last_seen: int | None = None) -> models.PublicUser:
    return models.PublicUser(user.user_id, user.handle, user.display_name, user.status_text,
                             photo_media_id=user.photo_media_id or None, last_seen=last_seen)


def privacy_settings(user: User) -> models.PrivacySettings:
    return models.PrivacySettings(user.last_seen_setting, user.profile_visibility,
                                  user.groups_add, user.read_receipts)


def own_user(user: User) -> models.OwnUser:
    return models.OwnUser(user.user_id, user.handle, user.display_name, user.status_text,
                          user.created_at, user.hide_last_seen, user.read_receipts,
                          photo_media_id=user.photo_media_id or None)


def login(result: LoginResult) -> models.LoginResult:
    return models.LoginResult(result.token, result.user.user_id, result.device.device_id,
                              result.expires_at)


def devices(entries: list[Device], current_device_id: int) -> models.Devices:
    return models.Devices([models.Device(entry.device_id, entry.name, entry.created_at,
                                         entry.device_id == current_device_id)
                           for entry in entries])


def message(entry: Message, note: Annotation | None = None) -> models.Message:
    """`note`: what history adds (reactions; the latest body and when it was edited)."""
    body = entry.body if note is None or note.body is None else note.body
    return models.Message(
        entry.message_id, entry.conversation_id, entry.seq, entry.sender_id,
        entry.client_msg_id, entry.content_type, _json_body(body), entry.ts,
        [attachment(item) for item in entry.attachments] or None, entry.expires_at or None,
        reactions(note.reactions) if note is not None and note.reactions else None,
        note.edited_at or None if note is not None else None,
        entry.reply_to or None, quote(entry.quote), list(entry.mentions) or None,
        bool(entry.forwarded) or None, replies.is_forwarded_many(entry.forwarded) or None)


def quote(data: dict[str, Any] | None) -> models.Quote | None:
    """The quote the owner made (domain/replies.py quote_of) as the response model."""
    if data is None:
        return None
    return models.Quote(int(data["sender_id"]), data["content_type"], data.get("text"),
                        data.get("deleted"))


def forwarded(outcomes: list[ForwardOutcome]) -> models.Forwarded:
    results = []
    for outcome in outcomes:
        if outcome.result is not None:
            sent = outcome.result
            results.append(models.ForwardResult(outcome.conversation_id, sent.message_id,
                                                sent.seq, sent.ts))
        else:
            assert outcome.error is not None
            results.append(models.ForwardResult(outcome.conversation_id, error=models.ErrorDetail(
                outcome.error.code, outcome.error.message)))
    return models.Forwarded(results)


def _json_body(body: Body) -> str | dict[str, Any]:
    """Bytes as base64, also inside an entry's map (an edit of an opaque message)."""
    if isinstance(body, bytes):
        return base64.b64encode(body).decode()
    if isinstance(body, dict) and isinstance(body.get("body"), bytes):
        return {**body, "body": base64.b64encode(body["body"]).decode()}
    return body


def reactions(summary: dict[str, tuple[int, bool]]) -> dict[str, Any]:
    return {emoji: {"count": count, "me": mine} for emoji, (count, mine) in summary.items()}


def reaction_summary(conversation_id: int, seq: int,
                     summary: dict[str, tuple[int, bool]]) -> models.ReactionSummary:
    return models.ReactionSummary(conversation_id, seq, reactions(summary))


def edited(seq: int, ts: int) -> models.Edited:
    return models.Edited(seq, ts)


def edit_history(rows: list[tuple[int, object, int]]) -> models.EditHistory:
    return models.EditHistory([
        models.EditEntry(seq, base64.b64encode(body).decode() if isinstance(body, bytes)
                         else str(body), ts) for seq, body, ts in rows])


def attachment(item: dict[str, Any]) -> models.Attachment:
    return models.Attachment(item["media_id"], item["kind"], item["content_type"],
                             item["size"], item["sha256"], item["filename"], item["width"],
                             item["height"], list(item["thumbnails"]),
                             item.get("thumbnail_media_id") or None)


def history(page: HistoryPage) -> models.History:
    notes = page.annotations
    return models.History([message(entry, notes.get(entry.seq)) for entry in page.messages],
                          page.has_more)


def send_result(result: SendResult) -> models.SendResult:
    return models.SendResult(result.message_id, result.conversation_id, result.seq, result.ts)


def receipts(mark: Watermark) -> models.Receipts:
    return models.Receipts(mark.delivered_seq, mark.read_seq)


def conversation(conv: Conversation, viewer_id: int) -> models.Conversation:
    return models.Conversation(
        conv.conversation_id, conv.kind, conv.name, conv.created_by, conv.created_at,
        conv.head_seq, conv.last_ts, conv.unread(viewer_id),
        receipts(conv.watermark(viewer_id)),
        [models.Member(user_id, member.role) for user_id, member in conv.members.items()],
        conv.photo_media_id or None, *_request(conv, viewer_id), conv.disappearing_s,
        conv.kind == "direct" or conv.anyone_sets_timer, _pins(conv, viewer_id),
        conv.encrypted)


def _pins(conv: Conversation, viewer_id: int) -> list[int]:
    """The pins the viewer can read (not those of messages from before they joined)."""
    member = conv.members.get(viewer_id)
    floor = member.joined_seq if member is not None else 0
    return [seq for seq in conv.pins if seq >= floor]


def _request(conv: Conversation, viewer_id: int) -> tuple[str | None, bool | None]:
    """A direct chat's request and block state as `viewer_id` may see it (never whether
    the other side blocks them)."""
    state = conv.direct
    if state is None:
        return None, None
    request = None
    if state.status in ("pending", "declined"):
        request = "sent" if state.requested_by == viewer_id else "received"
    return request, True if viewer_id in state.blocked_by else None


def conversations(convs: list[Conversation], viewer_id: int) -> models.Conversations:
    return models.Conversations([conversation(conv, viewer_id) for conv in convs])


def message_status(conversation_id: int, seq: int,
                   status: list[tuple[int, bool, bool | None]]) -> models.MessageStatus:
    return models.MessageStatus(conversation_id, seq, [
        models.MemberStatus(user_id, delivered, read) for user_id, delivered, read in status])


def uploaded(blob_url: str, record: MediaRecord) -> models.Uploaded:
    return models.Uploaded(record.media_id, blob_url, record.sha256, record.size,
                    record.content_type, record.filename, record.width, record.height,
                    [models.ThumbnailInfo(thumb.size, thumb.content_type, thumb.width, thumb.height)
                     for thumb in record.thumbs])
