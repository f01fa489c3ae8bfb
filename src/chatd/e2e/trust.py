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
    #: "changed" (same device id, other keys), "added" or "removed".
    kind: str
    old: DeviceKeys | None
    new: DeviceKeys | None
    #: The user was verified (safety number compared) before this change.
    was_verified: bool

    def describe(self) -> str:
        what = {"changed": "changed its security keys", "added": "was added",
                "removed": "was removed"}[self.kind]
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

    def observe(self, user_id: str, devices: list[DeviceKeys]) -> list[KeyChange]:
        """Compare a fresh key query with what we trust. New devices of a user already
        known are trusted at once (and reported, `added`); a changed device is not
        (`trusted()` keeps answering the old keys) until `accept()`."""
        current = {device.device_id: device for device in devices
                   if device.user_id == user_id}
        known = self.known.get(user_id)
        if known is None:
            self.known[user_id] = current
            return []
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
        return changes

    def trusted(self, user_id: str) -> list[DeviceKeys]:
        """The devices we encrypt to: known ones, without those whose keys changed and
        were not accepted."""
        return [device for device_id, device in sorted(self.known.get(user_id, {}).items())
                if (user_id, device_id) not in self.pending]

    def device_by_key(self, curve25519: str) -> DeviceKeys | None:
        for devices in self.known.values():
            for device in devices.values():
                if device.curve25519 == curve25519:
                    return device
        return None

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
