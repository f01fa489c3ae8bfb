"""The WebSocket frame protocol, sans-I/O.

Every frame is a map with a `type`. Two encodings carry the same frames: JSON text frames
(subprotocol `chatd.json`, the default) and msgpack binary frames (`chatd.msgpack`).
Ids are decimal strings in both, so a client sees the same values either way; message
bodies of non-text content types are raw bytes in msgpack and base64 strings in JSON.

Client → server frames are parsed and validated into the dataclasses below by
`decode_client_frame`, which raises `FrameError` (carrying the request id when the frame
had one) for anything malformed. Server → client frames are `OutFrame`s, which cache their
encoding so a message fanned out to many sockets is encoded once per codec.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from chatd.domain import replies, rules
from chatd.domain.ids import parse_id
from chatd.domain.media import Attaching
from chatd.domain.models import Message, User
from chatd.domain.reactions import check_emoji
from chatd.errors import BadRequest, ChatdError, DeviceListStale, RateLimited
from chatd.protocol import edge

Codec = Literal["json", "msgpack"]
SUBPROTOCOLS: dict[str, Codec] = {"chatd.json": "json", "chatd.msgpack": "msgpack"}
MAX_REQ_LENGTH = 64
MAX_SYNC_CURSORS = 10_000


class FrameError(Exception):
    def __init__(self, code: str, message: str, req: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req = req


# -- client → server --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendFrame:
    req: str
    conversation_id: int
    client_msg_id: str
    content_type: str
    body: str | bytes
    #: The attachments (`[{"media_id": "…", "thumbnail_media_id": "…"}]` on the wire).
    attachments: tuple[Attaching, ...] = ()
    #: The seq this replies to (0: not a reply).
    reply_to: int = 0
    #: Users mentioned explicitly (ids; the text's @handles are resolved as well).
    mentions: tuple[int, ...] = ()
    #: {user_id: device-list version} the sender encrypted for (empty: no check).
    device_list_version: dict[int, int] | None = None


@dataclass(frozen=True, slots=True)
class AckFrame:
    conversation_id: int
    seq: int
    req: str | None = None


@dataclass(frozen=True, slots=True)
class ReadFrame:
    conversation_id: int
    seq: int
    req: str | None = None


@dataclass(frozen=True, slots=True)
class TypingFrame:
    conversation_id: int
    req: str | None = None


@dataclass(frozen=True, slots=True)
class PingFrame:
    req: str | None = None


@dataclass(frozen=True, slots=True)
class SyncFrame:
    """Override the server's delivery cursors: stream each conversation after `seq`."""

    cursors: dict[int, int]
    req: str | None = None


@dataclass(frozen=True, slots=True)
class ReactFrame:
    """Set your reaction to a message; "" removes it."""

    conversation_id: int
    seq: int
    emoji: str
    req: str | None = None


@dataclass(frozen=True, slots=True)
class ToDeviceAckFrame:
    """The device has its to-device messages up to id `up_to`: the server deletes them."""

    up_to: int
    req: str | None = None


ClientFrame = (SendFrame | AckFrame | ReadFrame | TypingFrame | PingFrame | SyncFrame
               | ReactFrame | ToDeviceAckFrame)


def _unpack(data: str | bytes, codec: Codec) -> Any:
    if codec == "json":
        if isinstance(data, bytes):
            raise FrameError("bad_frame", "this connection speaks JSON: send text frames")
        decode: Any = edge.loads_json
    else:
        if isinstance(data, str):
            raise FrameError("bad_frame", "this connection speaks msgpack: send binary frames")
        decode = edge.unpack_msgpack
    try:
        return decode(data)
    except edge.InputError as exc:
        code = "malformed_frame" if exc.code == "malformed_json" else exc.code
        raise FrameError(code, exc.message) from None


def _field(frame: dict[str, Any], key: str, kind: type, req: str | None) -> Any:
    if key not in frame:
        raise FrameError("missing_field", f"{key}: this field is required", req)
    value = frame[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise FrameError("invalid_field", f"{key}: expected {kind.__name__}", req)
    return value


def _seq(frame: dict[str, Any], req: str | None) -> int:
    seq: int = _field(frame, "seq", int, req)
    if seq < 0:
        raise FrameError("invalid_field", "seq: must not be negative", req)
    return seq


def _id(frame: dict[str, Any], key: str, req: str | None) -> int:
    if key not in frame:
        raise FrameError("missing_field", f"{key}: this field is required", req)
    try:
        return parse_id(frame[key], key)
    except BadRequest as exc:
        raise FrameError("invalid_field", exc.message, req) from None


def _body(frame: dict[str, Any], content_type: str, codec: Codec, req: str) -> str | bytes:
    if "body" not in frame:
        raise FrameError("missing_field", "body: this field is required", req)
    body = frame["body"]
    if rules.is_text_content(content_type):
        if not isinstance(body, str):
            raise FrameError("invalid_field", "body: text/* bodies are strings", req)
        return body
    if isinstance(body, bytes) and codec == "msgpack":
        return body
    if isinstance(body, str):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise FrameError("invalid_field", f"body: {content_type} bodies are base64 strings "
                     "(or raw bytes over msgpack)", req)


#: Attachments one message may carry (as POST /messages/send).
MAX_ATTACHMENTS = 16


def _attachments(frame: dict[str, Any], req: str) -> tuple[Attaching, ...]:
    items = frame.get("attachments")
    if items is None:
        return ()
    if not isinstance(items, list) or len(items) > MAX_ATTACHMENTS:
        raise FrameError("invalid_field", f"attachments: a list of at most {MAX_ATTACHMENTS} "
                         "objects with a media_id", req)
    ids = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise FrameError("invalid_field", f"attachments[{index}]: an object", req)
        thumbnail = _id(item, "thumbnail_media_id", req) \
            if item.get("thumbnail_media_id") is not None else 0
        ids.append(Attaching(_id(item, "media_id", req), thumbnail))
    return tuple(ids)


def _reply_to(frame: dict[str, Any], req: str) -> int:
    if frame.get("reply_to") is None:
        return 0
    value = frame["reply_to"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FrameError("invalid_field", "reply_to: a seq (a non-negative integer)", req)
    return value


def _mentions(frame: dict[str, Any], req: str) -> tuple[int, ...]:
    items = frame.get("mentions")
    if items is None:
        return ()
    if not isinstance(items, list) or len(items) > replies.MAX_MENTIONS:
        raise FrameError("invalid_field", f"mentions: a list of at most {replies.MAX_MENTIONS} "
                         "user ids", req)
    return tuple(_id({"m": item}, "m", req) for item in items)


#: Users one send's `device_list_version` may name.
MAX_DEVICE_LIST_USERS = 1024


def _device_list_version(frame: dict[str, Any], req: str) -> dict[int, int] | None:
    items = frame.get("device_list_version")
    if items is None:
        return None
    if not isinstance(items, dict) or len(items) > MAX_DEVICE_LIST_USERS:
        raise FrameError("invalid_field", "device_list_version: an object of user_id: "
                         f"version, at most {MAX_DEVICE_LIST_USERS} users", req)
    versions = {}
    for user, version in items.items():
        if not isinstance(version, int) or isinstance(version, bool) \
                or not 0 <= version < 1 << 63:
            raise FrameError("invalid_field", "device_list_version: versions are "
                             "non-negative integers", req)
        versions[_id({"u": user}, "u", req)] = version
    return versions


def decode_client_frame(data: str | bytes, codec: Codec) -> ClientFrame:
    frame = _unpack(data, codec)
    if not isinstance(frame, dict):
        raise FrameError("malformed_frame", "a frame is a map with a 'type'")
    raw_req = frame.get("req")
    if raw_req is not None and (not isinstance(raw_req, str) or len(raw_req) > MAX_REQ_LENGTH):
        raise FrameError("invalid_field", f"req: a string of at most {MAX_REQ_LENGTH} characters")
    req: str | None = raw_req
    kind = frame.get("type")
    try:
        if kind == "send":
            if req is None:
                raise FrameError("missing_field", "req: a send needs a request id")
            content_type = rules.check_content_type(_field(frame, "content_type", str, req))
            return SendFrame(req, _id(frame, "conversation_id", req),
                             rules.check_client_msg_id(_field(frame, "client_msg_id", str, req)),
                             content_type, _body(frame, content_type, codec, req),
                             _attachments(frame, req), _reply_to(frame, req),
                             _mentions(frame, req), _device_list_version(frame, req))
        if kind == "ack":
            return AckFrame(_id(frame, "conversation_id", req), _seq(frame, req), req)
        if kind == "read":
            return ReadFrame(_id(frame, "conversation_id", req), _seq(frame, req), req)
        if kind == "typing":
            return TypingFrame(_id(frame, "conversation_id", req), req)
        if kind == "ping":
            return PingFrame(req)
        if kind == "react":
            emoji: str = _field(frame, "emoji", str, req)
            if emoji:
                check_emoji(emoji)
            return ReactFrame(_id(frame, "conversation_id", req), _seq(frame, req), emoji,
                              req)
        if kind == "sync":
            cursors = _field(frame, "cursors", dict, req)
            if len(cursors) > MAX_SYNC_CURSORS:
                raise FrameError("invalid_field", f"cursors: at most {MAX_SYNC_CURSORS}", req)
            parsed = {}
            for key, value in cursors.items():
                parsed[_id({"c": key}, "c", req)] = _seq({"seq": value}, req)
            return SyncFrame(parsed, req)
        if kind == "to_device_ack":
            up_to: int = _field(frame, "up_to", int, req)
            if not 0 <= up_to < 1 << 63:
                raise FrameError("invalid_field", "up_to: a to-device id (0 or more)", req)
            return ToDeviceAckFrame(up_to, req)
    except BadRequest as exc:
        raise FrameError(exc.code, exc.message, req) from None
    raise FrameError("unknown_type", f"unknown frame type {kind!r}; see docs/api.md", req)


# -- client side: building client frames, reading server messages ----------------------
# One definition of the client's half of the protocol, used by chatd.client, the
# benchmark's workers and the tests, so no client builds a frame by hand.


def _with_req(frame: dict[str, Any], req: str | None) -> dict[str, Any]:
    if req is not None:
        frame["req"] = req
    return frame


def send_request(req: str, conversation_id: int | str, client_msg_id: str, body: str | bytes,
                 content_type: str = "text/plain",
                 attachments: list[dict[str, str]] | None = None, reply_to: int = 0,
                 mentions: list[int | str] | None = None, *,
                 device_list_version: dict[str, int] | None = None) -> dict[str, Any]:
    """`attachments`: `[{"media_id": …, "thumbnail_media_id": …}]` (the latter optional);
    `reply_to`: the seq replied to; `mentions`: user ids mentioned explicitly;
    `device_list_version`: {user_id: version} the sender encrypted for."""
    frame: dict[str, Any] = {"type": "send", "req": req, "conversation_id": str(conversation_id),
             "client_msg_id": client_msg_id, "content_type": content_type, "body": body}
    if attachments:
        frame["attachments"] = attachments
    if reply_to:
        frame["reply_to"] = reply_to
    if mentions:
        frame["mentions"] = [str(user_id) for user_id in mentions]
    if device_list_version:
        frame["device_list_version"] = {str(user): version
                                        for user, version in device_list_version.items()}
    return frame


def ack_request(conversation_id: int | str, seq: int, req: str | None = None,
                ) -> dict[str, Any]:
    return _with_req({"type": "ack", "conversation_id": str(conversation_id), "seq": seq}, req)


def read_request(conversation_id: int | str, seq: int, req: str | None = None,
                 ) -> dict[str, Any]:
    return _with_req({"type": "read", "conversation_id": str(conversation_id), "seq": seq},
                     req)


def typing_request(conversation_id: int | str, req: str | None = None) -> dict[str, Any]:
    return _with_req({"type": "typing", "conversation_id": str(conversation_id)}, req)


def react_request(conversation_id: int | str, seq: int, emoji: str,
                  req: str | None = None) -> dict[str, Any]:
    """Set your reaction to the message at `seq` ("" removes it)."""
    return _with_req({"type": "react", "conversation_id": str(conversation_id), "seq": seq,
                      "emoji": emoji}, req)


def ping_request(req: str | None = None) -> dict[str, Any]:
    return _with_req({"type": "ping"}, req)


def sync_request(cursors: dict[int, int] | dict[str, int], req: str | None = None,
                 ) -> dict[str, Any]:
    return _with_req({"type": "sync",
                      "cursors": {str(conv): seq for conv, seq in cursors.items()}}, req)


def to_device_ack_request(up_to: int, req: str | None = None) -> dict[str, Any]:
    """Delete this device's to-device messages up to id `up_to` (it has them)."""
    return _with_req({"type": "to_device_ack", "up_to": up_to}, req)


def encode_request(frame: dict[str, Any], codec: Codec) -> str | bytes:
    """A client frame as a text (JSON) or binary (msgpack) WebSocket message. In JSON,
    bytes bodies travel as base64."""
    if codec == "json":
        return _json_encoder.encode(frame)
    packed: bytes = msgpack.packb(frame, use_bin_type=True)
    return packed


def decode_server_message(data: str | bytes) -> list[dict[str, Any]]:
    """The frames of one server message, a `batch` unpacked, in order."""
    frame: dict[str, Any] = (json.loads(data) if isinstance(data, str)
                             else msgpack.unpackb(data, raw=False))
    if frame.get("type") == "batch":
        batch: list[dict[str, Any]] = frame["frames"]
        return batch
    return [frame]


# -- server → client --------------------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot encode {type(value).__name__}")


_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                                 default=_json_default)


class OutFrame:
    """A server frame with its encodings cached: fan-out encodes once per codec."""

    __slots__ = ("_json", "_msgpack", "payload")

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self._json: bytes | None = None
        self._msgpack: bytes | None = None

    def json(self) -> bytes:
        """The frame as UTF-8 JSON."""
        if self._json is None:
            self._json = _json_encoder.encode(self.payload).encode()
        return self._json

    def msgpack(self) -> bytes:
        if self._msgpack is None:
            packed: bytes = msgpack.packb(self.payload, use_bin_type=True)
            self._msgpack = packed
        return self._msgpack

    def encode(self, codec: Codec) -> bytes:
        return self.json() if codec == "json" else self.msgpack()


_BATCH_MSGPACK_HEAD = msgpack.packb("type") + msgpack.packb("batch") + msgpack.packb("frames")


def encode_frames(frames: list[OutFrame], codec: Codec) -> bytes:
    """One WebSocket message for several frames: the frame itself, or a `batch` frame
    {"type": "batch", "frames": [...]} built from the cached encodings."""
    if len(frames) == 1:
        return frames[0].encode(codec)
    if codec == "json":
        return b'{"type":"batch","frames":[' + b",".join(f.json() for f in frames) + b"]}"
    packer = msgpack.Packer(use_bin_type=True)
    head: bytes = packer.pack_map_header(2) + _BATCH_MSGPACK_HEAD
    count: bytes = packer.pack_array_header(len(frames))
    return head + count + b"".join(f.msgpack() for f in frames)


def encode_messages(frames: list[OutFrame], codec: Codec, max_bytes: int) -> list[bytes]:
    """`frames` as few WebSocket messages as possible, each at most about `max_bytes`
    (a single larger frame goes alone), in order."""
    messages: list[bytes] = []
    group: list[OutFrame] = []
    size = 0
    for frame in frames:
        length = len(frame.encode(codec))
        if group and size + length > max_bytes:
            messages.append(encode_frames(group, codec))
            group, size = [], 0
        group.append(frame)
        size += length
    if group:
        messages.append(encode_frames(group, codec))
    return messages


def message_payload(message: Message) -> dict[str, Any]:
    payload = {
        "message_id": str(message.message_id),
        "conversation_id": str(message.conversation_id),
        "seq": message.seq,
        "sender_id": str(message.sender_id),
        "client_msg_id": message.client_msg_id,
        "content_type": message.content_type,
        "body": message.body,
        "ts": message.ts,
    }
    if message.attachments:
        payload["attachments"] = [attachment_payload(item) for item in message.attachments]
    if message.expires_at:
        payload["expires_at"] = message.expires_at
    if message.reply_to or message.mentions or message.forwarded:
        payload.update(rich_payload(message))
    return payload


def rich_payload(message: Message) -> dict[str, Any]:
    """Replies, mentions and forwards as clients see them (domain/replies.py); only the
    fields in use."""
    payload: dict[str, Any] = {}
    if message.reply_to:
        payload["reply_to"] = message.reply_to
        if message.quote is not None:
            payload["quote"] = message.quote
    if message.mentions:
        payload["mentions"] = [str(user_id) for user_id in message.mentions]
    if message.forwarded:
        payload["forwarded"] = True
        if replies.is_forwarded_many(message.forwarded):
            payload["forwarded_many"] = True
    return payload


def attachment_payload(attachment: dict[str, Any]) -> dict[str, Any]:
    """An attachment as clients see it: the stored record with its id as a string."""
    payload = {**attachment, "media_id": str(attachment["media_id"])}
    if attachment.get("thumbnail_media_id"):
        payload["thumbnail_media_id"] = str(attachment["thumbnail_media_id"])
    return payload


def message_frame(message: Message) -> OutFrame:
    return OutFrame({"type": "message", "message": message_payload(message)})


def message_deleted_frame(conversation_id: int, seq: int, deleted_by: int) -> OutFrame:
    """The entry at `seq` was deleted for everyone (its tombstone is in history now)."""
    return OutFrame({"type": "message_deleted", "conversation_id": str(conversation_id),
                     "seq": seq, "deleted_by": str(deleted_by)})


def message_hidden_frame(conversation_id: int, seq: int) -> OutFrame:
    """To the user's own devices: they deleted the entry at `seq` for themselves."""
    return OutFrame({"type": "message_hidden", "conversation_id": str(conversation_id),
                     "seq": seq})


def sent_frame(req: str, message_id: int, conversation_id: int, seq: int, ts: int) -> OutFrame:
    return OutFrame({"type": "sent", "req": req, "message_id": str(message_id),
                     "conversation_id": str(conversation_id), "seq": seq, "ts": ts})


def receipt_frame(conversation_id: int, user_id: int, delivered_seq: int,
                  read_seq: int | None) -> OutFrame:
    """`user_id`'s watermarks in a conversation; `read_seq` is left out when it is not
    to be shown (the reader, or the one told, turned read receipts off)."""
    payload: dict[str, Any] = {"type": "receipt", "conversation_id": str(conversation_id),
                               "user_id": str(user_id), "delivered_seq": delivered_seq}
    if read_seq is not None:
        payload["read_seq"] = read_seq
    return OutFrame(payload)


def presence_frame(user_id: int, online: bool, last_seen: int | None) -> OutFrame:
    return OutFrame({"type": "presence", "user_id": str(user_id), "online": online,
                     "last_seen": last_seen})


def typing_frame(conversation_id: int, user_id: int) -> OutFrame:
    return OutFrame({"type": "typing", "conversation_id": str(conversation_id),
                     "user_id": str(user_id)})


def public_profile(user: User) -> dict[str, Any]:
    profile = {"user_id": str(user.user_id), "handle": user.handle,
               "display_name": user.display_name, "status": user.status_text}
    if user.photo_media_id:
        profile["photo_media_id"] = str(user.photo_media_id)
    return profile


def profile_frame(user: dict[str, Any]) -> OutFrame:
    return OutFrame({"type": "profile", "user": user})


def pong_frame(req: str | None) -> OutFrame:
    return OutFrame({"type": "pong"} if req is None else {"type": "pong", "req": req})


def ok_frame(req: str) -> OutFrame:
    return OutFrame({"type": "ok", "req": req})


def error_frame(code: str, message: str, req: str | None = None) -> OutFrame:
    payload: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if req is not None:
        payload["req"] = req
    return OutFrame(payload)


def error_from(exc: ChatdError, req: str | None) -> OutFrame:
    frame = error_frame(exc.code, exc.message, req)
    if isinstance(exc, RateLimited):
        # Whole seconds, at least 1, as REST's Retry-After: retrying sooner is refused.
        frame.payload["retry_after"] = max(1, math.ceil(exc.retry_after))
    if isinstance(exc, DeviceListStale):
        # The users whose keys to query again, as REST's error body names them.
        frame.payload["users"] = [str(user) for user in exc.users]
    return frame


def to_device_frame(to_device_id: int, sender_user_id: int | None,
                    sender_device_id: int | None, kind: str, content: Any) -> OutFrame:
    """A to-device message for one device (services/to_device.py); a sealed one
    (`sender_user_id` None) names no sender."""
    payload: dict[str, Any] = {"type": "to_device", "id": to_device_id}
    if sender_user_id is not None:
        payload["sender_user_id"] = str(sender_user_id)
        payload["sender_device_id"] = str(sender_device_id)
    payload["message_type"] = kind  # "type" names the frame
    payload["content"] = content
    return OutFrame(payload)


def keys_low_frame(one_time_key_count: int, fallback_used: bool) -> OutFrame:
    """To one device: a claim left it fewer one-time keys than the server's threshold,
    or handed out its fallback key: upload more (and a new fallback key)."""
    return OutFrame({"type": "keys_low", "one_time_key_count": one_time_key_count,
                     "fallback_used": fallback_used})


def device_list_frame(user_id: int, version: int) -> OutFrame:
    """`user_id` added or removed a device with keys: their device-list version is now
    `version` (query their keys again before encrypting to them)."""
    return OutFrame({"type": "device_list", "user_id": str(user_id), "version": version})
