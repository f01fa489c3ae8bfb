"""REST models of the end-to-end relay: to-device messages and sealed sender (issue 14).

Kept apart from web/models.py (which holds the rest); the kinds they reuse come from
there, so ids, base64 and client-chosen ids read the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from chatd.errors import BadRequest
from chatd.services.to_device import MAX_TARGETS, MAX_TYPE_LENGTH
from chatd.web.models import BASE64, CLIENT_MSG_ID, ID, MS
from chatd.web.schema import Integer, Json, Kind, Limits, Model, Schema, String

#: Lists and objects inside a to-device `content` nest at most this deep (Olm's
#: {ciphertexts: {key: {type, body}}} needs 2). The schema spells each level out: a
#: recursive one is more than the fuzzers' schema readers take.
CONTENT_DEPTH = 4
#: Numbers a stored value can hold (msgpack: int64 up to uint64; floats in that range).
MIN_NUMBER = -(1 << 63)
MAX_NUMBER = (1 << 64) - 1


def _value_schema(depth: int) -> dict[str, Any]:
    scalars: list[dict[str, Any]] = [
        {"type": "string"}, {"type": "number", "minimum": MIN_NUMBER, "maximum": MAX_NUMBER},
        {"type": "boolean"}, {"type": "null"}]
    if depth == 0:
        return {"anyOf": scalars}
    inner = _value_schema(depth - 1)
    return {"anyOf": [*scalars, {"type": "array", "items": inner},
                      {"type": "object", "additionalProperties": inner}]}


def check_content(value: object, where: str, depth: int = CONTENT_DEPTH) -> None:
    """Exactly what `_value_schema(depth)` admits (`content` itself is an object of them)."""
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int | float):
        if not MIN_NUMBER <= value <= MAX_NUMBER:
            raise BadRequest(f"{where}: numbers must lie in {MIN_NUMBER}..{MAX_NUMBER}",
                             code="invalid_field")
        return
    if depth == 0 or not isinstance(value, list | dict):
        raise BadRequest(f"{where}: lists and objects nest at most {CONTENT_DEPTH} deep "
                         "inside content", code="invalid_field")
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        check_content(item, where, depth - 1)


#: A to-device message: {type, content}.
_MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["type", "content"],
    "properties": {"type": {"type": "string", "minLength": 1, "maxLength": MAX_TYPE_LENGTH},
                   "content": {"type": "object",
                               "additionalProperties": _value_schema(CONTENT_DEPTH)}}}
#: A device id, or "*" (every device of the user).
_DEVICE_KEY: dict[str, Any] = {"anyOf": [{"$ref": "#/components/schemas/Id"},
                                         {"type": "string", "enum": ["*"]}]}


class ToDeviceMessages(Kind):
    """`{user_id: {device_id | "*": {type, content}}}` as user -> device (0: "*") ->
    (type, content). The schema states every rule the parser applies."""

    __slots__ = ()
    plain = True

    def parse(self, value: object, name: str, limits: Limits,
              ) -> dict[int, dict[int, tuple[str, dict[str, Any]]]]:
        if not isinstance(value, dict):
            raise BadRequest(f"{name}: expected an object of user ids", code="invalid_field")
        parsed: dict[int, dict[int, tuple[str, dict[str, Any]]]] = {}
        count = 0
        for user_key, by_device in value.items():
            user_id = ID.parse(user_key, f"{name} key", limits)
            if not isinstance(by_device, dict):
                raise BadRequest(f"{name}.{user_key}: expected an object of device ids",
                                 code="invalid_field")
            devices: dict[int, tuple[str, dict[str, Any]]] = {}
            for device_key, message in by_device.items():
                device_id = 0 if device_key == "*" else ID.parse(
                    device_key, f"{name}.{user_key} key", limits)
                where = f"{name}.{user_key}.{device_key}"
                if not isinstance(message, dict):
                    raise BadRequest(f"{where}: expected {{type, content}}",
                                     code="invalid_field")
                kind, content = message.get("type"), message.get("content")
                if not isinstance(kind, str) or not 1 <= len(kind) <= MAX_TYPE_LENGTH:
                    raise BadRequest(f"{where}.type: a string of 1 to {MAX_TYPE_LENGTH} "
                                     "characters", code="invalid_field")
                if not isinstance(content, dict):
                    raise BadRequest(f"{where}.content: expected an object",
                                     code="invalid_field")
                for item in content.values():
                    check_content(item, f"{where}.content")
                devices[device_id] = (kind, content)
                count += 1
            parsed[user_id] = devices
        if count > MAX_TARGETS:
            raise BadRequest(f"{name}: at most {MAX_TARGETS} messages in one request",
                             code="too_many_targets")
        return parsed

    def schema(self, limits: Limits) -> Schema:
        return {"type": "object", "description": (
            "user id -> (device id, or \"*\" for every device of the user) -> "
            "{type, content}: content is any object (ciphertext, for end-to-end "
            "encryption), relayed as it is"),
            "propertyNames": {"$ref": "#/components/schemas/Id"},
            "additionalProperties": {"type": "object", "propertyNames": _DEVICE_KEY,
                                     "additionalProperties": _MESSAGE_SCHEMA}}


#: 16 bytes in standard base64: 22 characters and "==".
ACCESS_KEY = String(pattern=r"^[A-Za-z0-9+/]{21}[AQgw]==$",
                    rule="16 bytes in base64 (24 characters with its padding)",
                    description="a 16-byte unidentified access key, base64")


@dataclass(frozen=True, slots=True)
class SendToDevice(Model):
    description = ("Queue messages for devices; each waits on its device's queue until "
                   "that device acknowledges it (`to_device_ack`).")

    txn_id: Annotated[str, String(
        pattern=CLIENT_MSG_ID.pattern, rule=CLIENT_MSG_ID.rule,
        description="chosen by the sending device; a retry with the same one queues "
                    "nothing again")]
    messages: Annotated[dict[int, dict[int, tuple[str, dict[str, Any]]]], ToDeviceMessages()]


@dataclass(frozen=True, slots=True)
class ToDeviceQueued(Model):
    #: Messages queued (after "*" was expanded; unknown users and devices are skipped).
    queued: Annotated[int, Integer(minimum=0)]


@dataclass(frozen=True, slots=True)
class SenderCertificate(Model):
    description = ("`certificate` is base64 of the exact bytes signed (compact JSON with "
                   "sorted keys of user_id, device_id, identity_key, expires, key_id); "
                   "`signature` is their Ed25519 signature by the server key `key_id` "
                   "(GET /certificate/server_keys). The other fields repeat the "
                   "certificate's, for convenience.")

    certificate: Annotated[str, BASE64]
    signature: Annotated[str, BASE64]
    key_id: str
    user_id: Annotated[int, ID]
    device_id: Annotated[int, ID]
    identity_key: str
    expires: Annotated[int, MS]


@dataclass(frozen=True, slots=True)
class ServerKeys(Model):
    #: key_id -> base64 of the Ed25519 public key.
    keys: Annotated[dict[str, str], Json({"type": "object",
                                          "additionalProperties": {"type": "string"}})]
    #: Shards that did not answer (their keys are missing from `keys`).
    unreachable: Annotated[list[str], Json({"type": "array", "items": {"type": "string"}})]


@dataclass(frozen=True, slots=True)
class AccessKey(Model):
    access_key: Annotated[str, ACCESS_KEY]


@dataclass(frozen=True, slots=True)
class SealedSend(Model):
    description = ("The recipient's access key goes in the `Unidentified-Access-Key` "
                   "header (base64); no bearer token.")

    user_id: Annotated[int, ID]
    device_id: Annotated[int, ID]
    #: A sealed box to the device's sealed-sender key (`sealed_key` in /keys/query), base64.
    envelope: Annotated[str, BASE64]
