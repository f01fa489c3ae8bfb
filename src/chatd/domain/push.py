"""Push notifications, the pure part: which addresses a push may go to, what a push
says, and how it is marked (docs/notifications.md).

No I/O here: resolving a host and sending are in services/push/.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from chatd.errors import BadRequest

#: What an encrypted conversation's push says, or one whose user keeps previews off;
#: the client shows it (the payload then carries neither text nor sender).
GENERIC_TEXT = "New message"
#: NAT64's well-known prefix (RFC 6052): 64:ff9b::a.b.c.d reaches a.b.c.d.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def refused_address(address: IPAddress) -> str | None:
    """Why a push may not go to `address` (None: it may). An IPv6 form of an IPv4
    address (mapped, NAT64, 6to4, Teredo) is judged by the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            reason = refused_address(embedded)
            return f"{reason} (as {address})" if reason else None
    for reason, test in (("loopback", address.is_loopback),
                         ("unspecified", address.is_unspecified),
                         ("link-local", address.is_link_local),
                         ("multicast", address.is_multicast),
                         ("private", address.is_private),
                         ("site-local", getattr(address, "is_site_local", False)),
                         ("reserved", address.is_reserved)):
        if test:
            return reason
    if not address.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True, slots=True)
class Target:
    """Where a push goes: the URL as given, and its parts."""

    url: str
    scheme: str
    host: str
    port: int
    #: scheme://host[:port], what VAPID's `aud` names and what concurrency is kept by.
    origin: str


def parse_target(url: str, *, allow_private: bool, field: str = "endpoint") -> Target:
    """Check an endpoint or gateway URL's form (not yet where it resolves): https only,
    unless private endpoints are allowed (then http too, for a LAN or a test's fake)."""
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _refused(field, "not a valid URL") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise _refused(field, "must be an https URL")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise _refused(field, "must name a host (and no user or password)")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise _refused(field, "must be printable ASCII (a host in punycode)")
    if parts.fragment:
        raise _refused(field, "must not have a fragment")
    host = parts.hostname
    default = 443 if parts.scheme == "https" else 80
    port = port or default
    shown_host = f"[{host}]" if ":" in host else host
    origin = f"{parts.scheme}://{shown_host}" + ("" if port == default else f":{port}")
    return Target(url, parts.scheme, host, port, origin)


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _refused(field: str, why: str) -> BadRequest:
    return BadRequest(f"{field}: {why}", code="endpoint_refused")


# -- what a push says ---------------------------------------------------------------------


def topic(conversation_id: int, key: bytes) -> str:
    """The Web Push `Topic` (RFC 8030 §5.4: at most 32 base64url characters): one per
    conversation, so a push service replaces an undelivered push of it with the newer.
    Keyed (with the subscription's auth secret), so the push service sees an opaque
    value that differs per device, not the conversation's id."""
    digest = hmac.new(key, conversation_id.to_bytes(8, "big"), hashlib.sha256).digest()
    return "t" + base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


def urgency(kind: str) -> str:
    """RFC 8030 §5.3: a direct chat is someone waiting for you; a group can wait."""
    return "high" if kind == "direct" else "normal"


def preview_of(content_type: str, body: Any, limit: int) -> str | None:
    """The start of a text message (None for anything else: media, ciphertext, system)."""
    if not content_type.startswith("text/") or not isinstance(body, str):
        return None
    text = " ".join(body.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def payload(*, conversation_id: int, seq: int, unread: int, sender_name: str | None,
            preview: str | None) -> dict[str, Any]:
    """The push's JSON: `{conversation_id, seq, unread, sender_name?, preview?}`; ids are
    decimal strings, as everywhere in the API."""
    data: dict[str, Any] = {"conversation_id": str(conversation_id), "seq": seq,
                            "unread": unread}
    if sender_name is not None:
        data["sender_name"] = sender_name
    if preview is not None:
        data["preview"] = preview
    return data
