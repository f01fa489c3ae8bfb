"""The server's VAPID key (RFC 8292): made on first start, kept in the data directory.

A browser subscribes with the public key as its `applicationServerKey`; every push then
carries a JWT signed with the private key, which the push service checks against the key
the subscription was made with. So the key must outlive restarts and upgrades: a new
one would silently orphan every browser subscription. It is a file (`<data>/push/
vapid_private.pem`, mode 0600), not a database row, so an operator can back it up,
rotate it or give every shard of a cluster the same one (docs/notifications.md).
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid02

#: Seconds a signed JWT is valid (RFC 8292 §2: at most 24 h); reused until it has less
#: than `_RENEW_S` left, so one ECDSA signature serves many pushes to an origin.
_VALID_S = 12 * 3600
_RENEW_S = 3600


class VapidKey:
    def __init__(self, key: Vapid02, subject: str) -> None:
        self._key = key
        self._subject = subject
        self._signed: dict[str, tuple[float, str]] = {}
        raw = key.public_key.public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
        #: Uncompressed P-256 point, base64url without padding (a browser's
        #: applicationServerKey, and the `k=` of the Authorization header).
        self.public_key = base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def load_or_create(cls, directory: Path, subject: str) -> VapidKey:
        path = directory / "vapid_private.pem"
        if path.exists():
            return cls(Vapid02.from_file(str(path)), subject)
        directory.mkdir(parents=True, exist_ok=True)
        key = Vapid02()
        key.generate_keys()
        pem = key.private_pem()
        # Written whole under another name, then renamed: a crash never leaves half a key.
        partial = directory / "vapid_private.pem.tmp"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
        return cls(key, subject)

    def authorization(self, audience: str, now: float | None = None) -> str:
        """The `Authorization: vapid t=<JWT>, k=<key>` value for pushes to `audience`
        (an origin)."""
        now = time.time() if now is None else now
        cached = self._signed.get(audience)
        if cached is not None and cached[0] - now > _RENEW_S:
            return cached[1]
        expires = int(now) + _VALID_S
        header: str = self._key.sign({"aud": audience, "exp": expires,
                                      "sub": self._subject})["Authorization"]
        if len(self._signed) > 10_000:
            self._signed.clear()
        self._signed[audience] = (expires, header)
        return header
