"""Sealed sender on the SDK's side, sans-I/O: this device's sealed-sender key, and the
envelope a sealed message travels in (docs/e2e.md, "Sealed sender").

Why a key of its own: the envelope is a NaCl sealed box the server cannot open, so it
must be boxed to an X25519 key whose private half the recipient can use. vodozemac keeps
the Olm identity key's private half inside the account and never gives it out, so each
device makes a separate X25519 key (PyNaCl), keeps it in its encrypted state, and
publishes it signed by its ed25519 key (`identity.sealed_key` in `/keys/upload`).

The envelope, once opened: JSON `{certificate, signature, message}` where `certificate`
and `signature` are the server's sender certificate as `GET /certificate/sender` gives
them (base64 of the signed JSON, base64 Ed25519 signature) and `message` is the base64
of an Olm body (`wire.OlmBody`) from the certificate's device.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.public
import nacl.signing

from chatd.e2e.errors import DecryptionError, ForgedMessage, MissingKeys

#: The state record holding the private half (32 bytes).
RECORD = "sealed_key"


class CertificateRejected(ForgedMessage):
    """The envelope's sender certificate is forged, expired or names another key."""


class UnknownServerKey(CertificateRejected):
    """The certificate names a server key not in our list (fetch the list again)."""


class UnknownSender(MissingKeys):
    """The certificate's device is not among the devices we know (query its user)."""

    retryable = False

    def __init__(self, user_id: str) -> None:
        super().__init__(f"the sealed message's sender {user_id} has a device we do not "
                         "know yet")
        self.user_id = user_id


@dataclass(frozen=True)
class Opened:
    user_id: str
    device_id: str
    identity_key: str
    expires: int
    message: bytes


def unpadded(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def public_key_text(key: nacl.public.PrivateKey) -> str:
    """The public half as the key directory takes it (unpadded base64)."""
    return unpadded(bytes(key.public_key))


def seal(recipient_key: str, certificate: dict[str, Any], message: bytes) -> bytes:
    """The envelope for `recipient_key` (a device's published sealed-sender key)."""
    inner = json.dumps({"certificate": certificate["certificate"],
                        "signature": certificate["signature"],
                        "message": base64.b64encode(message).decode()}).encode()
    try:
        public = nacl.public.PublicKey(_decode(recipient_key))
    except (binascii.Error, ValueError, nacl.exceptions.CryptoError) as exc:
        raise DecryptionError(f"not a sealed-sender key: {exc}") from None
    sealed: bytes = nacl.public.SealedBox(public).encrypt(inner)
    return sealed


def open_envelope(key: nacl.public.PrivateKey, envelope: bytes,
                  server_keys: dict[str, str], now_ms: int) -> Opened:
    """The envelope's certificate checked (the server's signature, its expiry) and its
    Olm message. Whether the message is really the certificate's device's is the
    caller's check (its Olm sender key must be `identity_key`)."""
    try:
        inner = json.loads(nacl.public.SealedBox(key).decrypt(envelope))
        signed = base64.b64decode(inner["certificate"], validate=True)
        signature = base64.b64decode(inner["signature"], validate=True)
        message = base64.b64decode(inner["message"], validate=True)
    except (nacl.exceptions.CryptoError, ValueError, KeyError, TypeError) as exc:
        raise DecryptionError(f"the sealed envelope cannot be opened: {exc}") from None
    try:
        fields = json.loads(signed)
        key_id = str(fields["key_id"])
    except (ValueError, KeyError, TypeError):
        raise CertificateRejected("the sender certificate is malformed") from None
    server_key = server_keys.get(key_id)
    if server_key is None:
        raise UnknownServerKey(f"the sender certificate names unknown key {key_id}")
    try:
        nacl.signing.VerifyKey(base64.b64decode(server_key)).verify(signed, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, binascii.Error):
        raise CertificateRejected("the sender certificate's signature is not the "
                                  "server's") from None
    try:
        opened = Opened(str(fields["user_id"]), str(fields["device_id"]),
                        str(fields["identity_key"]), int(fields["expires"]), message)
    except (KeyError, TypeError, ValueError):
        raise CertificateRejected("the sender certificate lacks a field") from None
    if opened.expires <= now_ms:
        raise CertificateRejected("the sender certificate has expired")
    return opened
