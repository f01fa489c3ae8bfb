"""One claimer's share of a device's one-time keys, kept on the device's home.

A one-time key makes a new Olm session forward-secret from its first message; a device
has only as many as it uploaded. Without a limit per claimer, any signed-in stranger
could claim them all (the `keys_claim` rate limit is per claimer, not per target) and
leave the device's friends with its fallback key. So each claimer gets at most
`keys.claims_per_claimer` one-time keys of one device per `keys.claim_window` seconds;
past that it is handed the device's fallback key (`fallback: true`), as when the
one-time keys have run out, while other claimers still get one-time keys.

The counts are in memory on the home (a restart forgets them: at worst one more share
per claimer, which the `keys_claim` rate limit still bounds). Claims routed here use
`home.keys_claim_as {claimer, devices: [[user_id, device_id], ...]}`, answered as
`home.keys_claim` is (services/key_directory.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from chatd.config import KeysConfig
from chatd.domain.e2e_keys import ClaimedKey
from chatd.errors import BadRequest
from chatd.services.clock import Clock
from chatd.services.key_directory import MAX_CLAIM_DEVICES, KeyDirectory, claimed_to_wire
from chatd.services.peer_bodies import int_field
from chatd.storage import Store, records

Device = tuple[int, int]
#: (claimer, user, device) rows kept; past it the stale ones go, then the least recently
#: used, down to half.
_CACHE = 100_000


class ClaimShares:
    def __init__(self, *, directory: KeyDirectory, store: Store, clock: Clock,
                 config: KeysConfig) -> None:
        self._directory = directory
        self._store = store
        self._clock = clock
        self._config = config
        #: (claimer, user, device) -> when each one-time key of the window was handed out.
        self._given: dict[tuple[int, int, int], deque[int]] = {}
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "home.keys_claim_as": self._claim_request,
        }

    def _recent(self, key: tuple[int, int, int], now: int) -> deque[int]:
        times = self._given.get(key)
        if times is None:
            if len(self._given) >= _CACHE:
                self._forget_stale(now)
            times = self._given[key] = deque()
        cutoff = now - int(self._config.claim_window * 1000)
        while times and times[0] <= cutoff:
            times.popleft()
        return times

    def _forget_stale(self, now: int) -> None:
        cutoff = now - int(self._config.claim_window * 1000)
        for key in [key for key, times in self._given.items()
                    if not times or times[-1] <= cutoff]:
            del self._given[key]
        if len(self._given) >= _CACHE:
            # Not a clear(): that reset every claimer's share, so one claimer spreading
            # claims over enough devices could wipe its own limits on the rest.
            by_last_use = sorted(self._given, key=lambda key: self._given[key][-1])
            for key in by_last_use[:len(self._given) - _CACHE // 2]:
                del self._given[key]

    def _release(self, key: tuple[int, int, int], at: int) -> None:
        times = self._given.get(key)
        if times is not None and at in times:
            times.remove(at)

    async def claim(self, claimer: int, devices: list[Device],
                    ) -> tuple[list[ClaimedKey], list[Device]]:
        """As `KeyDirectory.claim`, for `claimer`: a device whose one-time keys it has
        had its share of gives it the fallback key instead."""
        wanted = list(dict.fromkeys(devices))
        if len(wanted) > MAX_CLAIM_DEVICES:
            raise BadRequest(f"devices: at most {MAX_CLAIM_DEVICES}", code="invalid_field")
        now = self._clock.now_ms()
        within: list[Device] = []
        over: list[Device] = []
        for device in wanted:
            times = self._recent((claimer, *device), now)
            if len(times) < self._config.claims_per_claimer:
                times.append(now)  # reserved before the await: concurrent claims count
                within.append(device)
            else:
                over.append(device)
        try:
            claimed, missing = (await self._directory.claim(within) if within
                                else ([], []))
        except BaseException:
            for device in within:
                self._release((claimer, *device), now)
            raise
        # Only one-time keys use the share.
        for key in claimed:
            if key.fallback:
                self._release((claimer, key.user_id, key.device_id), now)
        for device in missing:
            self._release((claimer, *device), now)
        for device in over:
            fallback = self._fallback(device)
            if fallback is None:
                missing.append(device)
            else:
                claimed.append(fallback)
        order = {device: index for index, device in enumerate(wanted)}
        claimed.sort(key=lambda key: order.get((key.user_id, key.device_id), 0))
        missing.sort(key=lambda device: order.get(device, 0))
        return claimed, missing

    def _fallback(self, device: Device) -> ClaimedKey | None:
        """The device's fallback key, not marked used: its one-time keys are not spent,
        only this claimer's share of them."""
        if self._directory.identity_keys(*device) is None:
            return None
        fallback = self._store.get(records.FALLBACK_KEYS, device)
        if fallback is None:
            return None
        return ClaimedKey(*device, fallback.key_id, fallback.key, fallback.signature, True)

    async def _claim_request(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("devices")
        if not isinstance(raw, list) or not all(
                isinstance(item, list) and len(item) == 2
                and all(isinstance(part, int) and not isinstance(part, bool) for part in item)
                for item in raw):
            raise BadRequest("devices: [[user_id, device_id], ...]", code="malformed_command")
        claimed, missing = await self.claim(int_field(body, "claimer"),
                                            [(item[0], item[1]) for item in raw])
        return {"claimed": [claimed_to_wire(key) for key in claimed],
                "missing": [list(device) for device in missing]}
