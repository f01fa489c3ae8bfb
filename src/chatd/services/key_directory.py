"""The key directory, the home's side: the end-to-end keys of the users homed here.

Each device publishes its identity keys (fixed for its life), up to 100 signed one-time
keys and a signed fallback key (domain/e2e_keys.py). A claim hands out one key per
device: a one-time key, deleted in the claim's own write, or once they are gone the
fallback key (marked `used`). Claims do not wait for each other: a key taken by a claim
whose batch has not landed yet is remembered (`_claimed`) and skipped by the claims
after it, so two claimers never get the same key, even in one batch. Uploads of keys
are rare and take a lock, so an upload's count against the cap is never raced.

A user's **device-list version** counts the changes to their set of devices with keys:
a device's first identity upload and the revocation of a device that had keys (whose
keys go in the revocation's own batch: `delete_device_keys`, an `AccountService`
device hook). Listeners hear of each bump once it is durable (services/keys.py tells
the user's contacts).

Everything other shards call is in `requests` (`home.keys_*`, wire forms below); the
client's side is services/keys.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from chatd.domain import e2e_keys
from chatd.domain.e2e_keys import ClaimedKey, DeviceIdentity, FallbackKey, SignedKey, Upload
from chatd.errors import BadRequest, Conflict, NotFound
from chatd.services.accounts import AccountService
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.peer_bodies import ids_field, int_field
from chatd.storage import Batch, Store, records

Device = tuple[int, int]
#: (user, device, one-time keys left, whether the fallback key was handed out).
KeysLow = Callable[[int, int, int, bool], None]

#: Devices one claim may name (as many ids as any request takes).
MAX_CLAIM_DEVICES = 1024


class KeyDirectory:
    def __init__(self, *, store: Store, commands: Commands, accounts: AccountService,
                 clock: Clock, low_threshold: int = 10) -> None:
        self._store = store
        self._commands = commands
        self._accounts = accounts
        self._clock = clock
        #: Below this many one-time keys left after a claim, the device is told to
        #: upload more (`keys_low`).
        self.low_threshold = low_threshold
        self._upload_lock = trio.Lock()
        # IDENTITY_OWNERS holds every identity row (rebuilt once on an older home).
        self._index_built = False
        # One-time keys handed out by claims whose batch has not landed: skipped.
        self._claimed: dict[Device, set[str]] = {}
        # Device-list versions written by batches not landed yet.
        self._versions: dict[int, int] = {}
        self._version_listeners: list[Callable[[int, int], None]] = []
        self._keys_low_listeners: list[KeysLow] = []
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "home.keys_upload": self._upload_request,
            "home.keys_query": self._query_request,
            "home.keys_claim": self._claim_request,
            "home.keys_identity": self._identity_request,
            "home.keys_versions": self._versions_request,
        }

    def on_device_list_change(self, listener: Callable[[int, int], None]) -> None:
        """`listener(user_id, version)` once a bump of the user's version is durable."""
        self._version_listeners.append(listener)

    def on_keys_low(self, listener: KeysLow) -> None:
        """`listener(user_id, device_id, left, fallback_used)` once a claim that left a
        device short of one-time keys (or handed out its fallback key) is durable."""
        self._keys_low_listeners.append(listener)

    def forget_pending(self) -> None:
        """After a failed batch write: what it held never reached the disk."""
        self._claimed.clear()
        self._versions.clear()

    # -- reads ----------------------------------------------------------------------------

    def identity_keys(self, user_id: int, device_id: int) -> DeviceIdentity | None:
        """The identity keys (Curve25519, Ed25519, the signature) of one device of a user
        homed here; None if it has published none (or is not theirs, or is gone)."""
        return self._store.get(records.IDENTITY_KEYS, (user_id, device_id))

    def version(self, user_id: int) -> int:
        """The user's device-list version (0: no device ever published keys)."""
        pending = self._versions.get(user_id)
        if pending is not None:
            return pending
        return self._store.get(records.DEVICE_LISTS, user_id) or 0

    def devices_of(self, user_id: int) -> list[DeviceIdentity]:
        return [identity for _, identity in self._store.scan(records.IDENTITY_KEYS,
                                                             records.u64(user_id))]

    def query(self, user_ids: list[int]) -> list[tuple[int, int, list[DeviceIdentity]]]:
        """(user, version, devices' identities) per user; 404 `unknown_user` for one who
        does not exist."""
        self._accounts.require_users_exist(user_ids)
        return [(user_id, self.version(user_id), self.devices_of(user_id))
                for user_id in user_ids]

    def one_time_key_count(self, user_id: int, device_id: int) -> int:
        skip = self._claimed.get((user_id, device_id), set())
        return sum(1 for (_, _, key_id), _ in self._store.scan(
            records.ONE_TIME_KEYS, records.pair(user_id, device_id)) if key_id not in skip)

    # -- upload ---------------------------------------------------------------------------

    async def upload(self, upload: Upload) -> int:
        """Store a device's keys; returns how many one-time keys it holds now. 409
        `identity_changed` for identity keys other than the device's, `identity_in_use`
        for keys another device on this home published; 400
        `bad_signature`, `too_many_keys`; 409 `key_id_reused` for a key id the device
        holds with another key."""
        e2e_keys.check_upload(upload)
        identity = dataclasses.replace(upload.identity, created_at=self._clock.now_ms())
        device = (identity.user_id, identity.device_id)
        async with self._upload_lock:
            if not self._index_built:
                await self._commands.submit(self._index_identities)
            return await self._commands.submit(partial(self._apply_upload, device, identity,
                                                       upload))

    def _apply_upload(self, device: Device, identity: DeviceIdentity, upload: Upload,
                      batch: Batch) -> int:
        if self._store.get(records.DEVICES, device) is None:
            raise NotFound("no such device (it was logged out)", code="unknown_device")
        stored = self.identity_keys(*device)
        if stored is None:
            self._require_unclaimed(batch, device, identity)
        if stored is not None and not stored.same_keys(identity):
            raise Conflict("this device published other identity keys; they are fixed for "
                           "its life (log in again for a new device)", code="identity_changed")
        sealed_changed = (stored is not None and bool(identity.sealed_key)
                          and bool(stored.sealed_key)
                          and stored.sealed_key != identity.sealed_key)
        if sealed_changed:
            raise Conflict("this device published another sealed-sender key; it is fixed "
                           "for the device's life, as its identity is",
                           code="sealed_key_changed")
        # A device that published none yet may add its sealed-sender key later (one made
        # before the key existed); an upload without one keeps the stored one.
        add_sealed = (stored is not None and bool(identity.sealed_key)
                      and not stored.sealed_key)
        skip = self._claimed.get(device, set())
        held = {key_id: key for (_, _, key_id), key in self._store.scan(
            records.ONE_TIME_KEYS, records.pair(*device)) if key_id not in skip}
        new: dict[str, SignedKey] = {}
        for key in upload.one_time_keys:
            same = held.get(key.key_id) or new.get(key.key_id)
            if same is not None:
                if same.key != key.key:
                    raise Conflict(f"one_time_keys.{key.key_id}: this device holds another "
                                   "key under that id", code="key_id_reused")
                continue
            new[key.key_id] = key
        count = len(held) + len(new)
        if count > e2e_keys.MAX_ONE_TIME_KEYS:
            raise BadRequest(f"one_time_keys: this device would hold {count}; at most "
                             f"{e2e_keys.MAX_ONE_TIME_KEYS} (it holds {len(held)})",
                             code="too_many_keys")
        # Checked: now write.
        if stored is None:
            batch.put(records.IDENTITY_KEYS, device, identity)
            for name in _owner_keys(identity):
                batch.put(records.IDENTITY_OWNERS, name, device)
            self._bump(batch, device[0])
        elif add_sealed:
            batch.put(records.IDENTITY_KEYS, device, dataclasses.replace(
                stored, sealed_key=identity.sealed_key,
                sealed_signature=identity.sealed_signature))
            self._bump(batch, device[0])
        for key in new.values():
            batch.put(records.ONE_TIME_KEYS, (*device, key.key_id), key)
        fallback = upload.fallback_key
        if fallback is not None:
            current = self._store.get(records.FALLBACK_KEYS, device)
            if current is None or (current.key_id, current.key) != (fallback.key_id,
                                                                    fallback.key):
                batch.put(records.FALLBACK_KEYS, device,
                          FallbackKey(fallback.key_id, fallback.key, fallback.signature))
        return count

    def _require_unclaimed(self, batch: Batch, device: Device,
                           identity: DeviceIdentity) -> None:
        """409 `identity_in_use` when another device on this home published either of
        these identity keys. The signature covers only the curve25519 key's text (issue
        14), so anyone can republish a device's public identity as their own; this stops
        it within a home (its /keys/query and sender certificates). Across homes only the
        SDK can tell (e2e/trust.py: a duplicated key is trusted by nobody)."""
        for name in _owner_keys(identity):
            owner = self._store.get(records.IDENTITY_OWNERS, name)
            if owner is None or owner == device:
                continue
            # An index row outlives its device only if that device's deletion raced the
            # rebuild; the identity row is the truth.
            held = self.identity_keys(*owner)
            if held is not None and name in _owner_keys(held):
                raise Conflict("these identity keys are published by another device; a "
                               "device makes its own", code="identity_in_use")

    def _index_identities(self, batch: Batch) -> None:
        """Once, on a home whose identity rows predate IDENTITY_OWNERS: index them all,
        in a batch of its own ahead of the upload that needs it (so a refused upload
        does not throw the rebuild away; uploads hold the lock, so one rebuilds)."""
        if self._store.get(records.META, _OWNERS_BUILT) is not None:
            batch.after_commit.append(self._owners_built)
            return
        for device, held in self._store.scan(records.IDENTITY_KEYS, b""):
            for name in _owner_keys(held):
                batch.put(records.IDENTITY_OWNERS, name, device)
        batch.put(records.META, _OWNERS_BUILT, True)
        batch.after_commit.append(self._owners_built)

    def _owners_built(self) -> None:
        self._index_built = True

    def _bump(self, batch: Batch, user_id: int) -> None:
        version = self.version(user_id) + 1
        batch.put(records.DEVICE_LISTS, user_id, version)
        self._versions[user_id] = version
        batch.after_commit.append(partial(self._version_landed, user_id, version))

    def _version_landed(self, user_id: int, version: int) -> None:
        if self._versions.get(user_id) == version:
            del self._versions[user_id]
        for listener in self._version_listeners:
            listener(user_id, version)

    # -- claim ----------------------------------------------------------------------------

    async def claim(self, devices: list[Device]) -> tuple[list[ClaimedKey], list[Device]]:
        """One key per device (a one-time key, else the fallback key), and the devices
        that have none (no keys, unknown, or not that user's)."""
        if len(devices) > MAX_CLAIM_DEVICES:
            raise BadRequest(f"devices: at most {MAX_CLAIM_DEVICES}", code="invalid_field")
        wanted = list(dict.fromkeys(devices))
        result: tuple[list[ClaimedKey], list[Device]] = await self._commands.submit(
            partial(self._apply_claim, wanted))
        return result

    def _apply_claim(self, devices: list[Device], batch: Batch
                     ) -> tuple[list[ClaimedKey], list[Device]]:
        claimed: list[ClaimedKey] = []
        missing: list[Device] = []
        for device in devices:
            if self.identity_keys(*device) is None:
                missing.append(device)
                continue
            skip = self._claimed.get(device, set())
            keys = [(key_id, key) for (_, _, key_id), key in self._store.scan(
                records.ONE_TIME_KEYS, records.pair(*device)) if key_id not in skip]
            if keys:
                key_id, key = keys[0]
                batch.delete(records.ONE_TIME_KEYS, (*device, key_id))
                self._claimed.setdefault(device, set()).add(key_id)
                batch.after_commit.append(partial(self._claim_landed, device, key_id))
                claimed.append(ClaimedKey(*device, key_id, key.key, key.signature, False))
                if len(keys) - 1 < self.low_threshold:
                    batch.after_commit.append(partial(self._tell_low, device, len(keys) - 1,
                                                      False))
                continue
            fallback = self._store.get(records.FALLBACK_KEYS, device)
            if fallback is None:
                missing.append(device)
                continue
            if not fallback.used:
                batch.put(records.FALLBACK_KEYS, device,
                          dataclasses.replace(fallback, used=True))
            claimed.append(ClaimedKey(*device, fallback.key_id, fallback.key,
                                      fallback.signature, True))
            batch.after_commit.append(partial(self._tell_low, device, 0, True))
        return claimed, missing

    def _claim_landed(self, device: Device, key_id: str) -> None:
        skip = self._claimed.get(device)
        if skip is not None:
            skip.discard(key_id)
            if not skip:
                del self._claimed[device]

    def _tell_low(self, device: Device, left: int, fallback_used: bool) -> None:
        for listener in self._keys_low_listeners:
            listener(device[0], device[1], left, fallback_used)

    def export_device(self, user_id: int, device_id: int) -> dict[str, Any]:
        """What a data export shows of a device's keys: its public identity keys."""
        identity = self.identity_keys(user_id, device_id)
        if identity is None:
            return {}
        return {"identity_keys": {"curve25519": identity.curve25519,
                                  "ed25519": identity.ed25519,
                                  "published_at": identity.created_at}}

    # -- revocation and erasure -----------------------------------------------------------

    def delete_device_keys(self, batch: Batch, user_id: int, device_id: int) -> None:
        """A device is being deleted in `batch` (logout, revocation, expiry, erasure):
        its keys go with it, and if it had published an identity the user's device-list
        version moves on."""
        device = (user_id, device_id)
        identity = self.identity_keys(*device)
        had_identity = identity is not None
        if identity is not None:
            self._drop_owner_rows(batch, device, identity)
        for (_, _, key_id), _key in self._store.scan(records.ONE_TIME_KEYS,
                                                     records.pair(*device)):
            batch.delete(records.ONE_TIME_KEYS, (*device, key_id))
        batch.delete(records.FALLBACK_KEYS, device)
        if had_identity:
            batch.delete(records.IDENTITY_KEYS, device)
            self._bump(batch, user_id)

    def _drop_owner_rows(self, batch: Batch, device: Device,
                         identity: DeviceIdentity) -> None:
        for name in _owner_keys(identity):
            if self._store.get(records.IDENTITY_OWNERS, name) == device:
                batch.delete(records.IDENTITY_OWNERS, name)

    async def erase(self, user_id: int) -> None:
        """The GDPR erase hook: every key of the user and their version row (idempotent;
        their devices are revoked by the erasure's first step already)."""

        def apply(batch: Batch) -> None:
            prefix = records.u64(user_id)
            for (_, device_id), identity in self._store.scan(records.IDENTITY_KEYS, prefix):
                batch.delete(records.IDENTITY_KEYS, (user_id, device_id))
                self._drop_owner_rows(batch, (user_id, device_id), identity)
            for key, _key in self._store.scan(records.ONE_TIME_KEYS, prefix):
                batch.delete(records.ONE_TIME_KEYS, key)
            for (_, device_id), _fallback in self._store.scan(records.FALLBACK_KEYS, prefix):
                batch.delete(records.FALLBACK_KEYS, (user_id, device_id))
            batch.delete(records.DEVICE_LISTS, user_id)
            self._versions.pop(user_id, None)

        await self._commands.submit(apply)

    # -- the home's answers to peers (wire forms) -----------------------------------------

    async def _upload_request(self, body: dict[str, Any]) -> Any:
        return await self.upload(upload_from_wire(body))

    def _query_request(self, body: dict[str, Any]) -> Any:
        return [[user_id, version, [identity_to_wire(identity) for identity in devices]]
                for user_id, version, devices in self.query(ids_field(body, "user_ids"))]

    async def _claim_request(self, body: dict[str, Any]) -> Any:
        devices = _devices_field(body)
        claimed, missing = await self.claim(devices)
        return {"claimed": [claimed_to_wire(key) for key in claimed],
                "missing": [list(device) for device in missing]}

    def _identity_request(self, body: dict[str, Any]) -> Any:
        identity = self.identity_keys(int_field(body, "user_id"), int_field(body, "device_id"))
        return None if identity is None else identity_to_wire(identity)

    def _versions_request(self, body: dict[str, Any]) -> Any:
        return [[user_id, self.version(user_id)] for user_id in ids_field(body, "user_ids")]


# -- wire forms -----------------------------------------------------------------------------
# home.keys_upload   {user_id, device_id, identity: [curve25519, ed25519, signature],
#                     one_time_keys: [[key_id, key, signature], ...],
#                     fallback_key: [key_id, key, signature] | nil,
#                     sealed_key: [key, signature] | absent} -> one-time key count
# home.keys_query    {user_ids} -> [[user_id, version, [identity, ...]], ...]
# home.keys_claim    {devices: [[user_id, device_id], ...]}
#                    -> {claimed: [[user, device, key_id, key, signature, fallback]],
#                        missing: [[user, device], ...]}
# home.keys_identity {user_id, device_id} -> identity | nil
# home.keys_versions {user_ids} -> [[user_id, version], ...]
# identity: [user_id, device_id, curve25519, ed25519, signature, created_at,
#            sealed_key, sealed_signature] (the last two "" for none; 6 fields from a
#            shard that predates them)


#: META: IDENTITY_OWNERS indexes every identity row.
_OWNERS_BUILT = "identity_owners_built"


def _owner_keys(identity: DeviceIdentity) -> tuple[str, str]:
    """The IDENTITY_OWNERS rows of a device's identity keys."""
    return f"c:{identity.curve25519}", f"e:{identity.ed25519}"


def _malformed(message: str) -> BadRequest:
    return BadRequest(message, code="malformed_command")


def _strings(value: Any, count: int, name: str) -> list[str]:
    if not isinstance(value, list) or len(value) != count or not all(
            isinstance(item, str) for item in value):
        raise _malformed(f"{name}: expected {count} strings")
    return value


def _devices_field(body: dict[str, Any]) -> list[Device]:
    value = body.get("devices")
    if not isinstance(value, list):
        raise _malformed("devices: expected a list of [user_id, device_id]")
    devices = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and all(
                isinstance(part, int) and not isinstance(part, bool) for part in item)):
            raise _malformed("devices: expected a list of [user_id, device_id]")
        devices.append((item[0], item[1]))
    return devices


def identity_to_wire(identity: DeviceIdentity) -> list[Any]:
    return [identity.user_id, identity.device_id, identity.curve25519, identity.ed25519,
            identity.signature, identity.created_at, identity.sealed_key,
            identity.sealed_signature]


def identity_from_wire(data: Any) -> DeviceIdentity:
    # 6 fields from a shard that predates the sealed-sender key, 8 since.
    if not isinstance(data, list) or len(data) not in (6, 8):
        raise _malformed("identity: expected 6 or 8 fields")
    user_id, device_id, curve, ed, signature, created_at = data[:6]
    sealed_key, sealed_signature = (str(data[6]), str(data[7])) if len(data) == 8 \
        else ("", "")
    return DeviceIdentity(int(user_id), int(device_id), str(curve), str(ed), str(signature),
                          int(created_at), sealed_key, sealed_signature)


def claimed_to_wire(key: ClaimedKey) -> list[Any]:
    return [key.user_id, key.device_id, key.key_id, key.key, key.signature, key.fallback]


def claimed_from_wire(data: Any) -> ClaimedKey:
    user_id, device_id, key_id, key, signature, fallback = data
    return ClaimedKey(int(user_id), int(device_id), str(key_id), str(key), str(signature),
                      bool(fallback))


def upload_to_wire(upload: Upload) -> dict[str, Any]:
    identity = upload.identity
    fallback = upload.fallback_key
    return {"user_id": identity.user_id, "device_id": identity.device_id,
            "identity": [identity.curve25519, identity.ed25519, identity.signature],
            "sealed_key": [identity.sealed_key, identity.sealed_signature],
            "one_time_keys": [[key.key_id, key.key, key.signature]
                              for key in upload.one_time_keys],
            "fallback_key": None if fallback is None
            else [fallback.key_id, fallback.key, fallback.signature]}


def upload_from_wire(body: dict[str, Any]) -> Upload:
    curve, ed, signature = _strings(body.get("identity"), 3, "identity")
    sealed = body.get("sealed_key")
    sealed_key, sealed_signature = ("", "") if sealed is None else _strings(
        sealed, 2, "sealed_key")
    identity = DeviceIdentity(int_field(body, "user_id"), int_field(body, "device_id"),
                              curve, ed, signature, 0, sealed_key, sealed_signature)
    keys = body.get("one_time_keys")
    if not isinstance(keys, list):
        raise _malformed("one_time_keys: expected a list")
    one_time = tuple(SignedKey(*_strings(item, 3, "one_time_keys[]")) for item in keys)
    fallback_data = body.get("fallback_key")
    fallback = None if fallback_data is None else SignedKey(
        *_strings(fallback_data, 3, "fallback_key"))
    return Upload(identity, one_time, fallback)
