"""What the SDK puts on the wire, sans-I/O: conversation bodies, to-device contents and
the plaintexts inside them (docs/e2e.md, "Wire formats").

Conversation bodies are msgpack maps (ciphertext is binary; the server stores the body as
opaque bytes):
- `application/vnd.chatd.olm` (direct chats): `{v: 1, sender_key, sender_device_id,
  ciphertexts: {recipient curve25519 key: [olm type, ciphertext]}}`, one entry per
  recipient device (the other member's devices and our own other devices).
- `application/vnd.chatd.megolm` (groups): `{v: 1, sender_key, sender_device_id,
  session_id, ciphertext}`.

To-device contents are JSON (they travel in `POST /to_device`): type `chatd.olm`,
`{sender_key, ciphertexts: {recipient curve25519 key: {type, body (base64)}}}`.

Plaintexts are msgpack maps. An Olm plaintext names its sender (user, device, ed25519
key) and its recipient (user, ed25519 key), and a conversation message its conversation,
so a ciphertext cannot be replayed to another device, passed off as another sender's, or
moved into another conversation; a Megolm plaintext names its conversation (its sender is
bound by the session). The application's `content` is a map the SDK does not interpret
(text in `text`; encrypted media adds its own fields, `chatd.e2e.media`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import msgpack

from chatd.e2e.errors import DecryptionError

OLM_CONTENT_TYPE = "application/vnd.chatd.olm"
MEGOLM_CONTENT_TYPE = "application/vnd.chatd.megolm"
TO_DEVICE_OLM = "chatd.olm"
#: Kinds of Olm plaintexts.
ROOM_KEY = "room_key"
MESSAGE = "message"
#: A sealed-sender message (its Olm body travels in a sealed envelope, chatd.e2e.sealed).
SEALED_MESSAGE = "sealed_message"
#: The to-device type the server queues sealed envelopes under.
TO_DEVICE_SEALED = "sealed"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def unpack_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            TypeError) as exc:
        raise DecryptionError(f"{what} is not msgpack ({exc})") from None
    if not isinstance(value, dict):
        raise DecryptionError(f"{what} is not a map")
    return value


def _str(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise DecryptionError(f"{name}: a string was expected")
    return value


@dataclass(frozen=True)
class OlmBody:
    sender_key: str
    sender_device_id: str
    #: recipient curve25519 key -> (olm message type, ciphertext)
    ciphertexts: dict[str, tuple[int, bytes]]

    def to_bytes(self) -> bytes:
        return pack({"v": 1, "sender_key": self.sender_key,
                     "sender_device_id": self.sender_device_id,
                     "ciphertexts": {k: [t, c] for k, (t, c) in self.ciphertexts.items()}})

    @classmethod
    def from_bytes(cls, data: bytes) -> OlmBody:
        raw = unpack_map(data, "an Olm body")
        texts = raw.get("ciphertexts")
        if not isinstance(texts, dict):
            raise DecryptionError("ciphertexts: a map was expected")
        parsed: dict[str, tuple[int, bytes]] = {}
        for key, value in texts.items():
            if not (isinstance(key, str) and isinstance(value, list) and len(value) == 2
                    and value[0] in (0, 1) and isinstance(value[1], bytes)):
                raise DecryptionError("ciphertexts: {key: [type, bytes]} was expected")
            parsed[key] = (value[0], value[1])
        return cls(_str(raw.get("sender_key"), "sender_key"),
                   _str(raw.get("sender_device_id"), "sender_device_id"), parsed)


@dataclass(frozen=True)
class MegolmBody:
    sender_key: str
    sender_device_id: str
    session_id: str
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        return pack({"v": 1, "sender_key": self.sender_key,
                     "sender_device_id": self.sender_device_id,
                     "session_id": self.session_id, "ciphertext": self.ciphertext})

    @classmethod
    def from_bytes(cls, data: bytes) -> MegolmBody:
        raw = unpack_map(data, "a Megolm body")
        ciphertext = raw.get("ciphertext")
        if not isinstance(ciphertext, bytes):
            raise DecryptionError("ciphertext: bytes were expected")
        return cls(_str(raw.get("sender_key"), "sender_key"),
                   _str(raw.get("sender_device_id"), "sender_device_id"),
                   _str(raw.get("session_id"), "session_id"), ciphertext)


def to_device_content(sender_key: str, ciphertexts: dict[str, tuple[int, bytes]],
                      ) -> dict[str, Any]:
    return {"sender_key": sender_key, "ciphertexts": {
        key: {"type": t, "body": base64.b64encode(c).decode()}
        for key, (t, c) in ciphertexts.items()}}


def parse_to_device_content(content: object) -> OlmBody:
    """A `chatd.olm` to-device content as an `OlmBody` (its device id is filled in by the
    caller from the frame)."""
    if not isinstance(content, dict) or not isinstance(content.get("ciphertexts"), dict):
        raise DecryptionError("a chatd.olm to-device content is a map with ciphertexts")
    parsed: dict[str, tuple[int, bytes]] = {}
    for key, value in content["ciphertexts"].items():
        try:
            message_type = value["type"]
            body = base64.b64decode(value["body"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise DecryptionError("ciphertexts: {key: {type, body}} expected") from None
        if message_type not in (0, 1) or not isinstance(key, str):
            raise DecryptionError("ciphertexts: an Olm type is 0 or 1")
        parsed[key] = (message_type, body)
    return OlmBody(_str(content.get("sender_key"), "sender_key"), "?", parsed)
