"""Push subscriptions, per device, on the user's home (where the notifier runs).

Rows `push_subscriptions` (user, subscription id) -> a map:

    {kind: "webpush", device_id, created_at, endpoint, p256dh, auth}
    {kind: "http", device_id, created_at, url, pushkey, app_id}

`PushSubscriptions` is the home's side; `PushClient` is what routes call from any shard
(each call goes to the home with `Users.ask_home`). The URL is checked (form, and where
it resolves: services/push/addresses.py) on the shard the client asked, before the home
is; the notifier checks it again before each send.

A device's subscriptions go when the device is revoked (logout included) and all of a
user's when the account is erased. Subscribing the same endpoint (or gateway URL and
pushkey) again answers the same id, moved to the asking device with the new keys: a
browser re-subscribing after a key rotation does not pile up rows.

Its `home.*` requests are added to `HomeApi`'s (services/context.py):

    home.push_subscribe {user_id, device_id, record} -> subscription id
    home.push_list {user_id} -> [[subscription id, record without secrets], ...]
    home.push_unsubscribe {user_id, subscription_id} -> True, or False for none
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from chatd.domain.ids import SnowflakeGenerator
from chatd.errors import BadRequest, ChatdError, Conflict
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.peer_bodies import int_field as _id
from chatd.services.push.addresses import Resolver
from chatd.services.users import Users
from chatd.storage import Batch, Store, records

#: Users whose subscriptions are kept in memory (cleared past this).
_CACHE = 50_000
#: Fields a listing or an export shows: never the keys nor the pushkey (a pushkey is a
#: device token at APNs or FCM; p256dh and auth decrypt what is pushed).
_PUBLIC = ("kind", "device_id", "created_at", "endpoint", "url", "app_id")


class PushSubscriptions:
    def __init__(self, *, store: Store, commands: Commands, clock: Clock,
                 ids: SnowflakeGenerator, max_per_user: int) -> None:
        self._store = store
        self._commands = commands
        self._clock = clock
        self._ids = ids
        self._max_per_user = max_per_user
        self._cache: dict[int, dict[int, dict[str, Any]]] = {}
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "home.push_subscribe": self._subscribe, "home.push_list": self._list,
            "home.push_unsubscribe": self._unsubscribe,
        }

    def forget_pending(self) -> None:
        self._cache.clear()

    def of(self, user_id: int) -> dict[int, dict[str, Any]]:
        """subscription id -> record, for a user homed here."""
        cached = self._cache.get(user_id)
        if cached is None:
            cached = {sub_id: dict(record) for (_, sub_id), record in
                      self._store.scan(records.PUSH_SUBSCRIPTIONS, records.u64(user_id))}
            if len(self._cache) >= _CACHE:
                self._cache.clear()
            self._cache[user_id] = cached
        return cached

    async def subscribe(self, user_id: int, device_id: int, record: dict[str, Any]) -> int:
        record = {**record, "device_id": device_id, "created_at": self._clock.now_ms()}
        same = _identity(record)

        def apply(batch: Batch) -> int:
            subs = self.of(user_id)
            existing = [sub_id for sub_id, old in subs.items() if _identity(old) == same]
            sub_id = existing[0] if existing else self._ids.next_id()
            if not existing and len(subs) >= self._max_per_user:
                raise Conflict(f"at most {self._max_per_user} push subscriptions per "
                               "account: delete one first", code="too_many_subscriptions")
            batch.put(records.PUSH_SUBSCRIPTIONS, (user_id, sub_id), record)
            subs[sub_id] = record
            return sub_id

        result: int = await self._commands.submit(apply)
        return result

    async def unsubscribe(self, user_id: int, sub_id: int) -> bool:
        def apply(batch: Batch) -> bool:
            subs = self.of(user_id)
            if sub_id not in subs:
                return False
            batch.delete(records.PUSH_SUBSCRIPTIONS, (user_id, sub_id))
            del subs[sub_id]
            return True

        result: bool = await self._commands.submit(apply)
        return result

    def drop(self, user_id: int, sub_id: int) -> None:
        """The push service said the subscription is gone (404, 410, rejected): delete
        it, not awaited (the notifier does not wait for a batch)."""
        def apply(batch: Batch) -> None:
            subs = self.of(user_id)
            if subs.pop(sub_id, None) is not None:
                batch.delete(records.PUSH_SUBSCRIPTIONS, (user_id, sub_id))

        # Shutting down: the next failed push deletes it again.
        with contextlib.suppress(ChatdError):
            self._commands.enqueue(apply)

    def device_revoked(self, user_id: int, device_id: int) -> None:
        """A revoked device gets no more pushes (accounts.on_device_revoked)."""
        for sub_id, record in list(self.of(user_id).items()):
            if record.get("device_id") == device_id:
                self.drop(user_id, sub_id)

    async def erase(self, user_id: int) -> None:
        """An erased account's subscriptions go (services/gdpr.py, erase hooks)."""
        def apply(batch: Batch) -> None:
            for sub_id in list(self.of(user_id)):
                batch.delete(records.PUSH_SUBSCRIPTIONS, (user_id, sub_id))
            self._cache.pop(user_id, None)

        await self._commands.submit(apply)

    def listing(self, user_id: int) -> list[list[Any]]:
        return [[sub_id, public_record(record)]
                for sub_id, record in sorted(self.of(user_id).items())]

    def export(self, user_id: int) -> list[dict[str, Any]]:
        """A data export's list (services/gdpr.py): where pushes go, never the keys."""
        return [{"subscription_id": str(sub_id), **public_record(record),
                 "device_id": str(record.get("device_id"))}
                for sub_id, record in sorted(self.of(user_id).items())]

    # -- home.* requests -----------------------------------------------------------------------

    async def _subscribe(self, body: dict[str, Any]) -> int:
        record = body.get("record")
        if not isinstance(record, dict):
            raise BadRequest("record: expected a map", code="malformed_command")
        return await self.subscribe(_id(body, "user_id"), _id(body, "device_id"),
                                    _checked_record(record))

    def _list(self, body: dict[str, Any]) -> list[list[Any]]:
        return self.listing(_id(body, "user_id"))

    async def _unsubscribe(self, body: dict[str, Any]) -> bool:
        return await self.unsubscribe(_id(body, "user_id"), _id(body, "subscription_id"))


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record[key] for key in _PUBLIC if key in record}


def _identity(record: dict[str, Any]) -> tuple[Any, ...]:
    if record.get("kind") == "webpush":
        return ("webpush", record.get("endpoint"))
    return ("http", record.get("url"), record.get("pushkey"))


def _checked_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record from a peer, with exactly the fields of its kind, each a string."""
    kind = record.get("kind")
    names = {"webpush": ("endpoint", "p256dh", "auth"),
             "http": ("url", "pushkey", "app_id")}.get(kind if isinstance(kind, str) else "")
    if names is None or not all(isinstance(record.get(name), str) for name in names):
        raise BadRequest("record: not a push subscription", code="malformed_command")
    return {"kind": kind, **{name: record[name] for name in names}}


def decode_key(value: str, field: str, size: int) -> bytes:
    """A base64url key (padding optional) of exactly `size` bytes."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise BadRequest(f"keys.{field}: expected {size} bytes, base64url",
                         code="invalid_push_key")
    return raw


class PushClient:
    """Subscriptions from any shard: checked here, kept at the user's home."""

    def __init__(self, *, users: Users, home: PushSubscriptions, resolver: Resolver) -> None:
        self._users = users
        self._home = home
        self._resolver = resolver

    async def subscribe(self, user_id: int, device_id: int, *, kind: str,
                        endpoint: str | None = None, p256dh: str | None = None,
                        auth: str | None = None, url: str | None = None,
                        pushkey: str | None = None, app_id: str | None = None) -> int:
        record: dict[str, Any]
        if kind == "webpush":
            if endpoint is None or p256dh is None or auth is None:
                raise BadRequest("a webpush subscription needs endpoint and keys",
                                 code="missing_field")
            point = decode_key(p256dh, "p256dh", 65)
            decode_key(auth, "auth", 16)
            try:
                ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            except ValueError:
                raise BadRequest("keys.p256dh: not a P-256 public key",
                                 code="invalid_push_key") from None
            await self._resolver.check(endpoint, "endpoint")
            record = {"kind": kind, "endpoint": endpoint, "p256dh": p256dh, "auth": auth}
        else:
            if url is None or pushkey is None or app_id is None:
                raise BadRequest("an http subscription needs url, pushkey and app_id",
                                 code="missing_field")
            await self._resolver.check(url, "url")
            record = {"kind": kind, "url": url, "pushkey": pushkey, "app_id": app_id}
        sub_id: int = await self._users.ask_home(
            user_id, "home.push_subscribe",
            {"user_id": user_id, "device_id": device_id, "record": record},
            self._home.requests["home.push_subscribe"])
        return sub_id

    async def listing(self, user_id: int) -> list[tuple[int, dict[str, Any]]]:
        rows = await self._users.ask_home(user_id, "home.push_list", {"user_id": user_id},
                                          self._home.requests["home.push_list"])
        return [(int(sub_id), dict(record)) for sub_id, record in rows]

    async def unsubscribe(self, user_id: int, sub_id: int) -> bool:
        return bool(await self._users.ask_home(
            user_id, "home.push_unsubscribe", {"user_id": user_id, "subscription_id": sub_id},
            self._home.requests["home.push_unsubscribe"]))
