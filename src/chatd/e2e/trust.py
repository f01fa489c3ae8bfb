"""Trust in other people's device keys: trust on first use, warnings when keys change,
and safety numbers to compare in person.

- The first time we see a user's devices (a key query), we record their identity keys
  and trust them (TOFU, as WhatsApp and Signal do by default).
- Later queries are compared with that record. A device whose keys differ under the same
  device id is a **key change**: it is refused as the same device (the server may be
  substituting keys) and reported; a device that appears or goes away is reported too.
  The caller shows each `KeyChange` to the user; `accept()` makes the new keys known.
- `safety_number()` is Signal's numeric fingerprint: for each user, SHA-512 iterated
  5,200 times over a version, the user's identity keys (here: the sorted ed25519 keys of
  all their devices, since identity is per device) and their user id; 30 digits each
  from the first 30 bytes (six 5-byte chunks, each mod 100,000); the two halves sorted,
  so both people see the same 60 digits. Equal digits on both phones mean that nobody in
  between swapped keys. `verify()` records the keys the digits were compared for; a later
  change to a verified user's keys is flagged `was_verified`.
- A curve25519 or ed25519 key that appears under two different devices (of one user or
  of two) is **duplicated**: someone republished another device's public keys as their
  own (a home refuses that within itself, 409 `identity_in_use`, but a home cannot see
  the others). We cannot tell which device is genuine, so neither is encrypted to
  (`trusted()` leaves both out) and each is reported once (`duplicate`). Messages are
  still matched to their sender by the (user, device) the message names, never by key
  alone (`device()`), so the genuine device's messages keep decrypting: the copy's owner
  holds no private key and cannot write a message that decrypts under it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

_VERSION = b"\x00\x00"
_ITERATIONS = 5200


@dataclass(frozen=True)
class DeviceKeys:
    user_id: str
    device_id: str
    curve25519: str
    ed25519: str


@dataclass(frozen=True)
class KeyChange:
    user_id: str
    device_id: str
    #: "changed" (same device id, other keys), "added", "removed", or "duplicate" (its
    #: keys are also another device's, `old`: not encrypted to).
    kind: str
    old: DeviceKeys | None
    new: DeviceKeys | None
    #: The user was verified (safety number compared) before this change.
    was_verified: bool

    def describe(self) -> str:
        what = {"changed": "changed its security keys", "added": "was added",
                "removed": "was removed",
                "duplicate": "shares its security keys with another device (one of them "
                             "copied the other's): neither is trusted"}[self.kind]
        tail = " — you had verified them: compare safety numbers again" \
            if self.was_verified else ""
        return f"user {self.user_id}: device {self.device_id} {what}{tail}"


class TrustStore:
    def __init__(self) -> None:
        #: user id -> device id -> the keys we trust for it.
        self.known: dict[str, dict[str, DeviceKeys]] = {}
        #: user id -> the sorted ed25519 keys their safety number was compared for.
        self.verified: dict[str, list[str]] = {}
        #: Key changes seen and not yet accepted: (user, device) -> the new keys.
        self.pending: dict[tuple[str, str], DeviceKeys] = {}
        #: Devices already reported `duplicate` (each is reported once).
        self.flagged: set[tuple[str, str]] = set()

    def observe(self, user_id: str, devices: list[DeviceKeys]) -> list[KeyChange]:
        """Compare a fresh key query with what we trust. New devices of a user already
        known are trusted at once (and reported, `added`); a changed device is not
        (`trusted()` keeps answering the old keys) until `accept()`."""
        current = {device.device_id: device for device in devices
                   if device.user_id == user_id}
        known = self.known.get(user_id)
        if known is None:
            self.known[user_id] = current
            return self._report_duplicates(False)
        was_verified = user_id in self.verified
        changes: list[KeyChange] = []
        for device_id, device in sorted(current.items()):
            old = known.get(device_id)
            if old is None:
                known[device_id] = device
                changes.append(KeyChange(user_id, device_id, "added", None, device,
                                         was_verified))
            elif (old.curve25519, old.ed25519) != (device.curve25519, device.ed25519) \
                    and self.pending.get((user_id, device_id)) != device:
                self.pending[(user_id, device_id)] = device
                changes.append(KeyChange(user_id, device_id, "changed", old, device,
                                         was_verified))
        for device_id in sorted(set(known) - set(current)):
            changes.append(KeyChange(user_id, device_id, "removed", known.pop(device_id),
                                     None, was_verified))
            self.pending.pop((user_id, device_id), None)
        if changes and was_verified and self.verified[user_id] != _ed_keys(
                list(known.values())):
            del self.verified[user_id]
        return changes + self._report_duplicates(was_verified)

    def _key_holders(self) -> dict[str, set[tuple[str, str]]]:
        """Every key we know (curve25519 and ed25519, trusted or pending) -> the devices
        that published it."""
        holders: dict[str, set[tuple[str, str]]] = {}
        devices = [d for by_id in self.known.values() for d in by_id.values()]
        for device in [*devices, *self.pending.values()]:
            for key in (device.curve25519, device.ed25519):
                holders.setdefault(key, set()).add((device.user_id, device.device_id))
        return holders

    def _duplicated(self, holders: dict[str, set[tuple[str, str]]]) -> set[tuple[str, str]]:
        return {holder for owners in holders.values() if len(owners) > 1
                for holder in owners}

    def _report_duplicates(self, was_verified: bool) -> list[KeyChange]:
        holders = self._key_holders()
        changes: list[KeyChange] = []
        for user_id, device_id in sorted(self._duplicated(holders) - self.flagged):
            device = self.known.get(user_id, {}).get(device_id) \
                or self.pending.get((user_id, device_id))
            if device is None:
                continue
            others = sorted((holders[device.curve25519] | holders[device.ed25519])
                            - {(user_id, device_id)})
            other = self.device(*others[0]) if others else None
            self.flagged.add((user_id, device_id))
            changes.append(KeyChange(user_id, device_id, "duplicate", other, device,
                                     was_verified and user_id in self.verified))
        return changes

    def is_duplicated(self, device: DeviceKeys) -> bool:
        """Its curve25519 or ed25519 key is also another device's."""
        holders = self._key_holders()
        me = (device.user_id, device.device_id)
        return bool((holders.get(device.curve25519, set())
                     | holders.get(device.ed25519, set())) - {me})

    def trusted(self, user_id: str) -> list[DeviceKeys]:
        """The devices we encrypt to: known ones, without those whose keys changed and
        were not accepted, and without those whose keys are also another device's."""
        duplicated = self._duplicated(self._key_holders())
        return [device for device_id, device in sorted(self.known.get(user_id, {}).items())
                if (user_id, device_id) not in self.pending
                and (user_id, device_id) not in duplicated]

    def knows_key(self, key: str) -> bool:
        """Some device we know (trusted or pending) published this key."""
        return key in self._key_holders()

    def device(self, user_id: str, device_id: str) -> DeviceKeys | None:
        """The keys we hold for the device a message names (its (user, device), as the
        Olm payload binds them): a key alone may be published by an impostor too."""
        return self.known.get(user_id, {}).get(device_id)

    def accept(self, user_id: str, device_id: str) -> None:
        """The user acknowledged a key change: trust the new keys."""
        device = self.pending.pop((user_id, device_id), None)
        if device is not None:
            self.known.setdefault(user_id, {})[device_id] = device
            self.verified.pop(user_id, None)

    def verify(self, user_id: str) -> None:
        """The safety numbers matched: remember which keys they were for."""
        self.verified[user_id] = _ed_keys(self.trusted(user_id))

    def is_verified(self, user_id: str) -> bool:
        return self.verified.get(user_id) == _ed_keys(self.trusted(user_id))

    # -- persistence ------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return json.dumps({
            "known": {user: [asdict(d) for d in devices.values()]
                      for user, devices in self.known.items()},
            "verified": self.verified,
            "pending": [asdict(d) for d in self.pending.values()],
            "flagged": sorted(self.flagged),
        }, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrustStore:
        raw = json.loads(data)
        store = cls()
        store.known = {user: {d["device_id"]: DeviceKeys(**d) for d in devices}
                       for user, devices in raw["known"].items()}
        store.verified = raw["verified"]
        store.pending = {(d["user_id"], d["device_id"]): DeviceKeys(**d)
                         for d in raw["pending"]}
        # States saved before duplicates were flagged have none.
        store.flagged = {(user, device) for user, device in raw.get("flagged", [])}
        return store


def _ed_keys(devices: list[DeviceKeys]) -> list[str]:
    return sorted(device.ed25519 for device in devices)


def fingerprint(user_id: str, ed25519_keys: list[str]) -> str:
    """One user's 30 digits (Signal's NumericFingerprintGenerator, version 0)."""
    identity = b"".join(key.encode() for key in sorted(ed25519_keys))
    digest = hashlib.sha512(_VERSION + identity + user_id.encode()).digest()
    for _ in range(_ITERATIONS - 1):
        digest = hashlib.sha512(digest + identity).digest()
    return "".join(f"{int.from_bytes(digest[i:i + 5], 'big') % 100_000:05d}"
                   for i in range(0, 30, 5))


def safety_number(user_a: str, keys_a: list[str], user_b: str, keys_b: list[str]) -> str:
    """The 60 digits both users see, in 12 groups of 5."""
    halves = sorted([fingerprint(user_a, keys_a), fingerprint(user_b, keys_b)])
    digits = "".join(halves)
    return " ".join(digits[i:i + 5] for i in range(0, 60, 5))
