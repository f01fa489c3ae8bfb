"""End-to-end keys, pure: what a device publishes, how its signatures are checked.

A device publishes an identity (its Curve25519 and Ed25519 public keys, the Curve25519
key signed with the Ed25519 one), one-time keys and a fallback key, each signed with the
device's Ed25519 key. Keys and signatures are unpadded base64, as vodozemac prints them,
and the signed bytes are pinned: the *base64 text* of the key (what vodozemac's
`Account.sign(key_b64.encode())` signs). The server keeps them on the user's home
(services/key_directory.py) and never sees a private key.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from chatd.errors import BadRequest

#: One-time keys a device may hold at once (an upload past it is refused).
MAX_ONE_TIME_KEYS = 100
#: A 32-byte public key in unpadded base64 (43 characters).
KEY_PATTERN = r"^[A-Za-z0-9+/]{43}$"
#: A 64-byte Ed25519 signature in unpadded base64 (86 characters).
SIGNATURE_PATTERN = r"^[A-Za-z0-9+/]{86}$"
#: A key id as the device names it (vodozemac: base64 of a counter, 11 characters).
KEY_ID_PATTERN = r"^[A-Za-z0-9+/=_-]{1,64}$"

_KEY = re.compile(KEY_PATTERN)
_SIGNATURE = re.compile(SIGNATURE_PATTERN)
_KEY_ID = re.compile(KEY_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device's identity keys: fixed for the device's life."""

    user_id: int
    device_id: int
    curve25519: str
    ed25519: str
    #: The Ed25519 signature of the curve25519 key's base64 text.
    signature: str
    created_at: int = 0
    #: The device's sealed-sender key (X25519, unpadded base64; "" when it published
    #: none) and its ed25519 signature of that base64 text. Sealed envelopes are boxed
    #: to it, not to `curve25519`: vodozemac never lets the identity's private half out,
    #: so a sealed box to it could never be opened (docs/e2e.md, "Sealed sender").
    sealed_key: str = ""
    sealed_signature: str = ""

    def same_keys(self, other: DeviceIdentity) -> bool:
        return self.curve25519 == other.curve25519 and self.ed25519 == other.ed25519


@dataclass(frozen=True, slots=True)
class SignedKey:
    """A one-time or fallback key with its signature."""

    key_id: str
    key: str
    signature: str


@dataclass(frozen=True, slots=True)
class FallbackKey:
    """The device's fallback key: handed out (and marked used) once the one-time keys
    are gone, until the device uploads a new one."""

    key_id: str
    key: str
    signature: str
    used: bool = False


@dataclass(frozen=True, slots=True)
class ClaimedKey:
    """One key handed to a claimer for (user, device)."""

    user_id: int
    device_id: int
    key_id: str
    key: str
    signature: str
    fallback: bool


@dataclass(frozen=True, slots=True)
class Upload:
    """A checked `POST /keys/upload` body."""

    identity: DeviceIdentity
    one_time_keys: tuple[SignedKey, ...]
    fallback_key: SignedKey | None


def _unpadded(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def check_key(value: str, name: str) -> str:
    if not _KEY.fullmatch(value):
        raise BadRequest(f"{name}: a 32-byte key in unpadded base64 (43 characters)",
                         code="invalid_field")
    return value


def check_signature_text(value: str, name: str) -> str:
    if not _SIGNATURE.fullmatch(value):
        raise BadRequest(f"{name}: a 64-byte signature in unpadded base64 (86 characters)",
                         code="invalid_field")
    return value


def check_key_id(value: str, name: str) -> str:
    if not _KEY_ID.fullmatch(value):
        raise BadRequest(f"{name}: a key id of 1 to 64 characters of base64 or '-', '_'",
                         code="invalid_field")
    return value


def verify(ed25519: str, key: str, signature: str) -> bool:
    """Whether `signature` is `ed25519`'s signature of the text `key` (its base64)."""
    try:
        VerifyKey(_unpadded(ed25519)).verify(key.encode(), _unpadded(signature))
    except (BadSignatureError, binascii.Error, ValueError):
        return False
    return True


def check_upload(upload: Upload) -> None:
    """Every signature checked with the device's Ed25519 key (400 `bad_signature`) and
    the one-time key count bounded (400 `too_many_keys`)."""
    identity = upload.identity
    check_key(identity.curve25519, "identity.curve25519")
    check_key(identity.ed25519, "identity.ed25519")
    check_signature_text(identity.signature, "identity.signature")
    if not verify(identity.ed25519, identity.curve25519, identity.signature):
        raise BadRequest("identity.signature: not the ed25519 key's signature of the "
                         "curve25519 key's base64 text", code="bad_signature")
    if identity.sealed_key or identity.sealed_signature:
        check_key(identity.sealed_key, "identity.sealed_key.key")
        check_signature_text(identity.sealed_signature, "identity.sealed_key.signature")
        if not verify(identity.ed25519, identity.sealed_key, identity.sealed_signature):
            raise BadRequest("identity.sealed_key.signature: not the device's ed25519 "
                             "signature of the key's base64 text", code="bad_signature")
    if len(upload.one_time_keys) > MAX_ONE_TIME_KEYS:
        raise BadRequest(f"one_time_keys: at most {MAX_ONE_TIME_KEYS} per device",
                         code="too_many_keys")
    named = [(f"one_time_keys.{item.key_id}", item) for item in upload.one_time_keys]
    if upload.fallback_key is not None:
        named.append((f"fallback_key.{upload.fallback_key.key_id}", upload.fallback_key))
    for name, item in named:
        check_key_id(item.key_id, name)
        check_key(item.key, f"{name}.key")
        check_signature_text(item.signature, f"{name}.signature")
        if not verify(identity.ed25519, item.key, item.signature):
            raise BadRequest(f"{name}.signature: not the device's ed25519 signature of "
                             "the key's base64 text", code="bad_signature")


def stale_users(claimed: dict[int, int], current: dict[int, int]) -> list[int]:
    """The users whose device-list version a sender gave differs from the current one
    (a user never seen has version 0)."""
    return sorted(user for user, version in claimed.items()
                  if current.get(user, 0) != version)
