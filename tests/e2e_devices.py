"""Real end-to-end keys for tests: a vodozemac account per device and the upload bodies
it makes, signed as the key directory expects (each signature over a key's base64 text)."""

from __future__ import annotations

import base64
from typing import Any

import vodozemac
from nacl.signing import VerifyKey


def _unpadded(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


class KeyDevice:
    """One device's Olm account."""

    def __init__(self) -> None:
        self.account = vodozemac.Account()

    @property
    def curve25519(self) -> str:
        key: str = self.account.curve25519_key.to_base64()
        return key

    @property
    def ed25519(self) -> str:
        key: str = self.account.ed25519_key.to_base64()
        return key

    def sign(self, text: str) -> str:
        signature: str = self.account.sign(text.encode()).to_base64()
        return signature

    def identity(self) -> dict[str, str]:
        return {"curve25519": self.curve25519, "ed25519": self.ed25519,
                "signature": self.sign(self.curve25519)}

    def one_time_keys(self, count: int) -> dict[str, dict[str, str]]:
        """`count` new one-time keys (vodozemac makes at most 50 unpublished at once)."""
        keys: dict[str, dict[str, str]] = {}
        while len(keys) < count:
            batch = min(50, count - len(keys))
            self.account.generate_one_time_keys(batch)
            for key_id, key in self.account.one_time_keys.items():
                text = key.to_base64()
                keys[key_id] = {"key": text, "signature": self.sign(text)}
            self.account.mark_keys_as_published()
        return keys

    def fallback_key(self) -> dict[str, dict[str, str]]:
        self.account.generate_fallback_key()
        [(key_id, key)] = self.account.fallback_key.items()
        text = key.to_base64()
        self.account.mark_keys_as_published()
        return {key_id: {"key": text, "signature": self.sign(text)}}

    def upload(self, one_time: int = 0, fallback: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"identity": self.identity()}
        if one_time:
            body["one_time_keys"] = self.one_time_keys(one_time)
        if fallback:
            body["fallback_key"] = self.fallback_key()
        return body


def signed_by(ed25519: str, key: str, signature: str) -> bool:
    """Whether `signature` is `ed25519`'s signature of the text `key` (checked here with
    PyNaCl directly, not with the server's code)."""
    try:
        VerifyKey(_unpadded(ed25519)).verify(key.encode(), _unpadded(signature))
    except Exception:
        return False
    return True
