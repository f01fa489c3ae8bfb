"""Request and response models of notifications: mute, previews (web/routes_notify.py)
and push subscriptions (web/routes_push.py). Kept apart from web/models.py, with the
same kinds, so the notification routes change one module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from chatd.web.models import ID, MS
from chatd.web.schema import Boolean, Either, Integer, ListOf, Model, Nested, String

#: The latest ms a mute may last until (year 33658: "forever" for any client).
MAX_MUTE_MS = 10**15
MUTED_UNTIL = Integer(minimum=0, maximum=MAX_MUTE_MS,
                      description="ms since the Unix epoch; 0 (or a time past) unmutes")


@dataclass(frozen=True, slots=True)
class MuteChange(Model):
    closed = True

    muted_until: Annotated[int | None, MUTED_UNTIL] = None


@dataclass(frozen=True, slots=True)
class MuteState(Model):
    conversation_id: Annotated[int, ID]
    muted_until: Annotated[int, Integer(minimum=0, description="0: not muted")]


@dataclass(frozen=True, slots=True)
class PreviewsChange(Model):
    closed = True

    previews: Annotated[bool | None, Boolean(
        description="message text in push notifications and emails (of conversations "
                    "that are not end-to-end encrypted)")] = None


@dataclass(frozen=True, slots=True)
class PreviewsState(Model):
    previews: bool


# -- push subscriptions ------------------------------------------------------------------

#: base64url (padding allowed), as a browser's PushSubscription.toJSON() gives the keys.
_B64URL = r"^[A-Za-z0-9_-]+={0,2}$"
#: Printable ASCII: push services give their endpoints with hosts in punycode.
_URL = String(max_length=2048, pattern=r"^https?://[\x21-\x7e]+$",
              rule="an https URL, printable ASCII (http only where "
                   "push.allow_private_endpoints is on)")
_KIND = String(pattern=r"^(?:webpush|http)$", rule="webpush or http")
_HTTP = String(pattern=r"^http$", rule="http")
_WEBPUSH = String(pattern=r"^webpush$", rule="webpush")


@dataclass(frozen=True, slots=True)
class PushKeys(Model):
    p256dh: Annotated[str, String(min_length=86, max_length=88, pattern=_B64URL,
                                  description="the browser's P-256 public key (65 bytes, "
                                              "base64url)")]
    auth: Annotated[str, String(min_length=22, max_length=24, pattern=_B64URL,
                                description="the 16-byte auth secret, base64url")]


_TEXT = String(min_length=1, max_length=512, pattern=r"^[\x21-\x7e]+$",
               rule="1 to 512 printable ASCII characters")


@dataclass(frozen=True, slots=True)
class PushSubscribe(Model):
    description = ("kind webpush: endpoint and keys (a browser's PushSubscription); "
                   "kind http: url, pushkey and app_id (a Sygnal-style push gateway)")

    kind: Annotated[str, _KIND]
    endpoint: Annotated[str | None, _URL] = None
    keys: Annotated[PushKeys | None, Nested(PushKeys)] = None
    url: Annotated[str | None, _URL] = None
    pushkey: Annotated[str | None, _TEXT] = None
    app_id: Annotated[str | None, _TEXT] = None

    constraints = (
        Either("endpoint", "a webpush subscription needs an endpoint",
               (("kind", _HTTP), ("endpoint", _URL))),
        Either("keys", "a webpush subscription needs keys {p256dh, auth}",
               (("kind", _HTTP), ("keys", Nested(PushKeys)))),
        Either("url", "an http subscription needs a url",
               (("kind", _WEBPUSH), ("url", _URL))),
        Either("pushkey", "an http subscription needs a pushkey",
               (("kind", _WEBPUSH), ("pushkey", _TEXT))),
        Either("app_id", "an http subscription needs an app_id",
               (("kind", _WEBPUSH), ("app_id", _TEXT))),
    )


@dataclass(frozen=True, slots=True)
class Subscribed(Model):
    subscription_id: Annotated[int, ID]


@dataclass(frozen=True, slots=True)
class PushSubscription(Model):
    subscription_id: Annotated[int, ID]
    kind: Annotated[str, _KIND]
    device_id: Annotated[int, ID]
    created_at: Annotated[int, MS]
    #: Where pushes go: the endpoint or the gateway URL (never the keys).
    target: str
    app_id: str | None = None


@dataclass(frozen=True, slots=True)
class PushSubscriptions(Model):
    subscriptions: Annotated[list[PushSubscription], ListOf(PushSubscription)]


@dataclass(frozen=True, slots=True)
class VapidKey(Model):
    public_key: Annotated[str, String(description="the server's VAPID public key: an "
                                                  "uncompressed P-256 point, base64url "
                                                  "without padding (applicationServerKey)")]
