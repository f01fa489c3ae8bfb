"""Models as JSON. Ids leave as decimal strings (JavaScript numbers stop at 2**53); times
are integers in ms since the Unix epoch."""

from __future__ import annotations

import base64
from typing import Any

from chatd.domain.models import Conversation, Device, Message, SendResult, User, Watermark
from chatd.protocol import frames

public_user = frames.public_profile


def own_user(user: User) -> dict[str, Any]:
    return {**public_user(user), "created_at": user.created_at,
            "hide_last_seen": user.hide_last_seen, "read_receipts": user.read_receipts}


def device(entry: Device, current_device_id: int) -> dict[str, Any]:
    return {"device_id": str(entry.device_id), "name": entry.name,
            "created_at": entry.created_at, "current": entry.device_id == current_device_id}


def message(entry: Message) -> dict[str, Any]:
    payload = frames.message_payload(entry)
    if isinstance(entry.body, bytes):
        payload["body"] = base64.b64encode(entry.body).decode()
    return payload


def send_result(result: SendResult) -> dict[str, Any]:
    return {"message_id": str(result.message_id), "conversation_id": str(result.conversation_id),
            "seq": result.seq, "ts": result.ts}


def watermark(mark: Watermark) -> dict[str, Any]:
    return {"delivered_seq": mark.delivered_seq, "read_seq": mark.read_seq}


def conversation(conv: Conversation, viewer_id: int) -> dict[str, Any]:
    return {
        "conversation_id": str(conv.conversation_id),
        "kind": conv.kind,
        "name": conv.name,
        "created_by": str(conv.created_by),
        "created_at": conv.created_at,
        "last_seq": conv.head_seq,
        "last_activity": conv.last_ts,
        "unread": conv.unread(viewer_id),
        "receipts": watermark(conv.watermark(viewer_id)),
        "members": [{"user_id": str(user_id), "role": member.role}
                    for user_id, member in conv.members.items()],
    }
