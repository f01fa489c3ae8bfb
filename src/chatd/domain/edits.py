"""Edits, pure: who may edit which message, and when.

Only its sender, within `limits.edit_window_s` of sending it. Text messages (text/*)
take a text body. A message with an opaque body and no attachments (an end-to-end
encrypted text: the server cannot tell) takes new opaque bytes: the server checks only
the sender and the window. Media messages, deleted ones and the server's own entries
cannot be edited.
"""

from __future__ import annotations

import base64
import binascii

from chatd.domain import rules, targets
from chatd.domain.models import Body, Message
from chatd.errors import BadRequest, Conflict, Forbidden, PayloadTooLarge


def plan_edit(message: Message, editor_id: int, body: Body, *, now_ms: int, window_s: int,
              retention_cutoff_ms: int, max_bytes: int) -> str | bytes:
    """The new body to store, if `editor_id` may edit `message` now with `body` (for an
    opaque message, bytes, or their base64 as JSON clients send them)."""
    new_body = _new_body(message, editor_id, body, now_ms=now_ms, window_s=window_s,
                         retention_cutoff_ms=retention_cutoff_ms)
    size = len(new_body.encode()) if isinstance(new_body, str) else len(new_body)
    if size > max_bytes:
        raise PayloadTooLarge(f"body is {size} bytes; the limit is {max_bytes}",
                              code="body_too_large")
    return new_body


def _new_body(message: Message, editor_id: int, body: Body, *, now_ms: int, window_s: int,
              retention_cutoff_ms: int) -> str | bytes:
    targets.require_message(message, now_ms=now_ms,
                                retention_cutoff_ms=retention_cutoff_ms, what="edited",
                                code="not_editable")
    if message.attachments:
        raise Conflict("a message that carries media cannot be edited", code="not_editable")
    if message.sender_id != editor_id:
        raise Forbidden("only its sender may edit a message", code="not_sender")
    if now_ms - message.ts > window_s * 1000:
        raise Forbidden(f"a message can be edited within {window_s} s of sending it "
                        "(limits.edit_window_s)", code="edit_window_passed")
    if rules.is_text_content(message.content_type):
        if not isinstance(body, str):
            raise BadRequest("body: a text/* message takes a text body", code="invalid_field")
        return body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise BadRequest(f"body: a {message.content_type} message takes the new bytes as base64 "
                     "(with padding)", code="invalid_field")
