"""The REST models of the key directory (/keys/upload, /keys/query, /keys/claim) and the
map kinds they need: JSON objects keyed by key ids or user ids, which no other route
takes. Each kind parses exactly what the schema it publishes admits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from chatd.domain import e2e_keys
from chatd.domain.ids import MAX_ID
from chatd.errors import BadRequest
from chatd.web.schema import (
    Boolean,
    Id,
    IdList,
    Integer,
    Kind,
    Limits,
    ListOf,
    Model,
    Schema,
    String,
)

_ID = Id(MAX_ID)
#: Users (or devices) one request names at most.
MAX_PER_REQUEST = 1024

KEY = String(pattern=e2e_keys.KEY_PATTERN, code="invalid_field",
             rule="a 32-byte key in unpadded base64 (43 characters)",
             description="a 32-byte public key, unpadded base64 (as vodozemac prints it)")
SIGNATURE = String(pattern=e2e_keys.SIGNATURE_PATTERN, code="invalid_field",
                   rule="a 64-byte Ed25519 signature in unpadded base64 (86 characters)",
                   description="an Ed25519 signature by the device's ed25519 key of the "
                               "signed key's base64 text, unpadded base64")


def _type_error(name: str, expected: str) -> BadRequest:
    return BadRequest(f"{name}: expected {expected}", code="invalid_field")


@dataclass(frozen=True, slots=True)
class SignedKeyMap(Kind):
    """{key_id: {key, signature}}: one-time keys, or the one fallback key."""

    min_items: int
    max_items: int

    plain = False

    def parse(self, value: object, name: str, limits: Limits) -> list[e2e_keys.SignedKey]:
        if not isinstance(value, dict):
            raise _type_error(name, "an object of key_id: {key, signature}")
        if not self.min_items <= len(value) <= self.max_items:
            raise BadRequest(f"{name}: {self.min_items} to {self.max_items} keys",
                             code="invalid_field")
        keys = []
        for key_id, item in value.items():
            e2e_keys.check_key_id(key_id, f"{name} key id")
            if not isinstance(item, dict):
                raise _type_error(f"{name}.{key_id}", "an object {key, signature}")
            for field in ("key", "signature"):
                if field not in item:
                    raise BadRequest(f"{name}.{key_id}.{field}: this field is required",
                                     code="missing_field")
            keys.append(e2e_keys.SignedKey(
                key_id, KEY.parse(item["key"], f"{name}.{key_id}.key", limits),
                SIGNATURE.parse(item["signature"], f"{name}.{key_id}.signature", limits)))
        return keys

    def schema(self, limits: Limits) -> Schema:
        schema: Schema = {
            "type": "object", "maxProperties": self.max_items,
            "propertyNames": {"pattern": e2e_keys.KEY_ID_PATTERN},
            "additionalProperties": {
                "type": "object", "required": ["key", "signature"],
                "properties": {"key": KEY.schema(limits),
                               "signature": SIGNATURE.schema(limits)}}}
        if self.min_items:
            schema["minProperties"] = self.min_items
        return schema


@dataclass(frozen=True, slots=True)
class VersionMap(Kind):
    """{user_id: device-list version} (a send's `device_list_version`)."""

    max_items: int = MAX_PER_REQUEST

    plain = False

    def parse(self, value: object, name: str, limits: Limits) -> dict[int, int]:
        if not isinstance(value, dict):
            raise _type_error(name, "an object of user_id: version")
        if len(value) > self.max_items:
            raise BadRequest(f"{name}: at most {self.max_items} users", code="invalid_field")
        return {_ID.parse(user, f"{name} key", limits): _VERSION.parse(
                    version, f"{name}.{user}", limits)
                for user, version in value.items()}

    def schema(self, limits: Limits) -> Schema:
        return {"type": "object", "maxProperties": self.max_items,
                "propertyNames": {"pattern": _ID.pattern},
                "additionalProperties": _VERSION.schema(limits),
                "description": "user_id -> the device-list version the sender knows "
                               "(from POST /keys/query)"}


_VERSION = Integer(minimum=0, maximum=2**63 - 1)


# -- requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealedKey(Model):
    """The device's sealed-sender key (X25519): sealed envelopes to the device are boxed
    to it. `signature` is the device's ed25519 signature of the key's base64 text."""

    key: Annotated[str, KEY]
    signature: Annotated[str, SIGNATURE]


@dataclass(frozen=True, slots=True)
class IdentityKeys(Model):
    """A device's identity keys; `signature` is over the curve25519 key's base64 text.
    `sealed_key` is optional and, once published, fixed like the rest."""

    curve25519: Annotated[str, KEY]
    ed25519: Annotated[str, KEY]
    signature: Annotated[str, SIGNATURE]
    sealed_key: SealedKey | None = None


@dataclass(frozen=True, slots=True)
class KeysUpload(Model):
    description = ("this device's keys: its identity (fixed for the device's life), "
                   f"up to {e2e_keys.MAX_ONE_TIME_KEYS} signed one-time keys held at "
                   "once, and a signed fallback key (replacing the one before)")

    identity: IdentityKeys
    one_time_keys: Annotated[list[e2e_keys.SignedKey] | None, SignedKeyMap(
        0, e2e_keys.MAX_ONE_TIME_KEYS)] = None
    fallback_key: Annotated[list[e2e_keys.SignedKey] | None, SignedKeyMap(1, 1)] = None


@dataclass(frozen=True, slots=True)
class KeysQuery(Model):
    user_ids: Annotated[list[int], IdList(_ID, min_items=1, max_items=MAX_PER_REQUEST)]


@dataclass(frozen=True, slots=True)
class DeviceRef(Model):
    user_id: Annotated[int, _ID]
    device_id: Annotated[int, _ID]


@dataclass(frozen=True, slots=True)
class KeysClaim(Model):
    description = "one key per device named: a one-time key, else the fallback key"

    devices: Annotated[list[DeviceRef], ListOf(DeviceRef, max_items=MAX_PER_REQUEST)]


# -- answers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyCount(Model):
    one_time_key_count: Annotated[int, Integer(minimum=0)]


@dataclass(frozen=True, slots=True)
class DeviceKeys(Model):
    device_id: Annotated[int, _ID]
    curve25519: Annotated[str, KEY]
    ed25519: Annotated[str, KEY]
    signature: Annotated[str, SIGNATURE]
    #: null when the device published none.
    sealed_key: SealedKey | None = None


@dataclass(frozen=True, slots=True)
class UserKeys(Model):
    user_id: Annotated[int, _ID]
    #: Moves on when a device publishes its identity or a device with keys is removed.
    version: Annotated[int, Integer(minimum=0)]
    devices: list[DeviceKeys]


@dataclass(frozen=True, slots=True)
class KeysQueryResult(Model):
    users: list[UserKeys]


@dataclass(frozen=True, slots=True)
class ClaimedKey(Model):
    user_id: Annotated[int, _ID]
    device_id: Annotated[int, _ID]
    key_id: Annotated[str, String(pattern=e2e_keys.KEY_ID_PATTERN)]
    key: Annotated[str, KEY]
    signature: Annotated[str, SIGNATURE]
    #: The device's fallback key: its one-time keys are gone.
    fallback: Annotated[bool, Boolean()]


@dataclass(frozen=True, slots=True)
class KeysClaimed(Model):
    keys: list[ClaimedKey]
    #: Devices with no key to give: no keys published, unknown, or not that user's.
    missing: list[DeviceRef]


def user_keys(rows: list[tuple[int, int, list[e2e_keys.DeviceIdentity]]]) -> KeysQueryResult:
    return KeysQueryResult([UserKeys(user_id, version, [
        DeviceKeys(item.device_id, item.curve25519, item.ed25519, item.signature,
                   SealedKey(item.sealed_key, item.sealed_signature)
                   if item.sealed_key else None)
        for item in devices]) for user_id, version, devices in rows])


def claimed(keys: list[e2e_keys.ClaimedKey], missing: list[tuple[int, int]]) -> KeysClaimed:
    return KeysClaimed([ClaimedKey(key.user_id, key.device_id, key.key_id, key.key,
                                   key.signature, key.fallback) for key in keys],
                       [DeviceRef(user, device) for user, device in missing])
