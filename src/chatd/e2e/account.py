"""This device's Olm account: its identity keys, and the one-time and fallback keys it
publishes in the key directory (`POST /keys/upload`).

Wire shapes (docs/e2e.md): identity `{curve25519, ed25519, signature}` where the signature
is the ed25519 one over the curve25519 key's base64 text; each one-time or fallback key
`{key_id: {key, signature}}`, signed over the key's base64 text.

Why at most `TARGET_ONE_TIME_KEYS` (50) on the server: vodozemac keeps the private halves
of a bounded number of one-time keys and forgets the oldest beyond it, so publishing more
than it remembers would hand claimers keys this device can no longer use. A key stays
"unpublished" in the account until `mark_published()`, so a failed upload is retried with
the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import vodozemac

#: How many one-time keys this device keeps in the directory.
TARGET_ONE_TIME_KEYS = 50
#: vodozemac generates at most this many per call.
_GENERATE_MAX = 50


@dataclass(frozen=True)
class IdentityKeys:
    curve25519: str
    ed25519: str


def verify_signature(ed25519: str, message: str, signature: str) -> bool:
    """Whether `signature` is `ed25519`'s over `message`'s UTF-8 bytes."""
    try:
        vodozemac.Ed25519PublicKey.from_base64(ed25519).verify_signature(
            message.encode(), vodozemac.Ed25519Signature.from_base64(signature))
    except (vodozemac.KeyException, vodozemac.SignatureException,
            vodozemac.DecodeException, ValueError):
        return False
    return True


class DeviceAccount:
    def __init__(self, account: vodozemac.Account) -> None:
        self.olm = account
        #: Changed since last saved (a pickle differs every time, so it cannot be
        #: compared: vodozemac encrypts it with a fresh nonce).
        self.dirty = True

    @classmethod
    def new(cls) -> DeviceAccount:
        return cls(vodozemac.Account())

    @classmethod
    def from_pickle(cls, pickle: str, key: bytes) -> DeviceAccount:
        account = cls(vodozemac.Account.from_pickle(pickle, key))
        account.dirty = False
        return account

    def pickle(self, key: bytes) -> str:
        return self.olm.pickle(key)

    @property
    def identity(self) -> IdentityKeys:
        return IdentityKeys(self.olm.curve25519_key.to_base64(),
                            self.olm.ed25519_key.to_base64())

    def sign(self, text: str) -> str:
        return self.olm.sign(text.encode()).to_base64()

    def identity_payload(self) -> dict[str, str]:
        identity = self.identity
        return {"curve25519": identity.curve25519, "ed25519": identity.ed25519,
                "signature": self.sign(identity.curve25519)}

    def prepare_upload(self, *, server_count: int | None = None,
                       new_fallback: bool = False) -> dict[str, Any]:
        """The `/keys/upload` body that brings the directory back to the target: new
        one-time keys for what `server_count` lacks (None: a first upload), a fallback key
        when there is none yet or `new_fallback` (the old one was used). Keys from an
        upload that failed are sent again."""
        self.dirty = True
        have = 0 if server_count is None else max(0, server_count)
        pending = len(self.olm.one_time_keys)
        missing = TARGET_ONE_TIME_KEYS - have - pending
        while missing > 0:
            count = min(missing, _GENERATE_MAX)
            self.olm.generate_one_time_keys(count)
            missing -= count
        if new_fallback or (server_count is None and not self._fallback_key()):
            # vodozemac 0.10's stubs leave out the fallback-key methods it has.
            self.olm.generate_fallback_key()  # type: ignore[attr-defined]
        body: dict[str, Any] = {"identity": self.identity_payload(),
                                "one_time_keys": self._signed(self.olm.one_time_keys)}
        if fallback := self._signed(self._fallback_key()):
            body["fallback_key"] = fallback
        return body

    def _fallback_key(self) -> dict[str, vodozemac.Curve25519PublicKey]:
        """The unpublished fallback key ({} once published)."""
        key: dict[str, vodozemac.Curve25519PublicKey] = \
            self.olm.fallback_key  # type: ignore[attr-defined]
        return key

    def mark_published(self) -> None:
        self.olm.mark_keys_as_published()
        self.dirty = True

    def _signed(self, keys: dict[str, vodozemac.Curve25519PublicKey],
                ) -> dict[str, dict[str, str]]:
        return {key_id: {"key": key.to_base64(), "signature": self.sign(key.to_base64())}
                for key_id, key in keys.items()}
