"""Signed links in notification emails, pure: verification and one-click unsubscribe.

A token is `<user_id>.<expires_s>.<signature>`: the signature is an HMAC-SHA256 (cut to
144 bits, base64url) over the link's purpose, the user, the expiry and the address it
is about. The address is not in the link, only under the signature, so a link made for
one address does nothing once the user has changed it, and the URL (which mail scanners
and logs see) names no address. The home checks a token against the address it holds,
with the secret only it knows (services/email_notify.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal

Purpose = Literal["verify", "unsubscribe"]

#: The form of a token, as the routes' query models publish it (web/models.py).
TOKEN_PATTERN = r"^[0-9]{1,20}\.[0-9]{1,12}\.[A-Za-z0-9_-]{24}$"
_TOKEN = re.compile(TOKEN_PATTERN[:-1] + r"\Z")
#: How long a verification link works (s); an unsubscribe link in an old mail must keep
#: working for as long as anyone reads old mail (RFC 8058 asks only that it works).
VERIFY_TTL_S = 24 * 3600
UNSUBSCRIBE_TTL_S = 400 * 24 * 3600


class BadToken(ValueError):
    """A token that is malformed, forged, expired, or about another address."""


@dataclass(frozen=True, slots=True)
class LinkToken:
    user_id: int
    expires_s: int
    signature: str


def parse(token: str) -> LinkToken:
    if not _TOKEN.match(token):
        raise BadToken("not a link token")
    user, expires, signature = token.split(".")
    return LinkToken(int(user), int(expires), signature)


def _signature(secret: bytes, purpose: Purpose, user_id: int, expires_s: int,
               address: str) -> str:
    message = f"chatd email {purpose}\n{user_id}\n{expires_s}\n{address.lower()}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()[:18]
    return base64.urlsafe_b64encode(digest).decode("ascii")


def make(secret: bytes, purpose: Purpose, user_id: int, address: str, now_ms: int) -> str:
    ttl = VERIFY_TTL_S if purpose == "verify" else UNSUBSCRIBE_TTL_S
    expires_s = now_ms // 1000 + ttl
    return f"{user_id}.{expires_s}.{_signature(secret, purpose, user_id, expires_s, address)}"


def check(secret: bytes, purpose: Purpose, token: LinkToken, address: str,
          now_ms: int) -> None:
    """Raise `BadToken` unless `token` is a live `purpose` link for `address`."""
    if token.expires_s * 1000 < now_ms:
        raise BadToken("the link has expired")
    expected = _signature(secret, purpose, token.user_id, token.expires_s, address)
    if not hmac.compare_digest(expected, token.signature):
        raise BadToken("the link is not valid")
