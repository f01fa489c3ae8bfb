"""End-to-end keys from any shard: the client's side of the key directory.

Keys live on each user's home (services/key_directory.py); `Keys` routes every call
there, here or over the mesh (`home.keys_*`), as `Users` does for accounts. It also
holds the two things the home's changes set off:

- `device_list {user_id, version}` to everyone who shares a conversation with the user
  (and the user's own devices) when their device-list version moves
  (`DeviceListNotifier`, a loop on the home, since finding the audience asks every
  shard for the user's conversations, as a profile change does);
- `keys_low {one_time_key_count, fallback_used}` to the sockets of the device a claim
  left short of one-time keys.

And the check a send makes when it carries `device_list_version` (`check_device_lists`):
the versions are asked of the recipients' homes, one request per home, only for sends
that carry them (docs/architecture.md, "E2E").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from chatd.domain import e2e_keys
from chatd.domain.e2e_keys import ClaimedKey, DeviceIdentity, Upload
from chatd.domain.models import Conversation, Session
from chatd.errors import ChatdError, DeviceListStale
from chatd.protocol import frames
from chatd.services.claim_shares import ClaimShares
from chatd.services.delivery import Delivery
from chatd.services.key_directory import (
    KeyDirectory,
    claimed_from_wire,
    identity_from_wire,
    upload_to_wire,
)
from chatd.services.ratelimits import RateLimits
from chatd.services.routing import Router

log = logging.getLogger(__name__)

Device = tuple[int, int]


class Keys:
    def __init__(self, *, router: Router, directory: KeyDirectory,
                 ratelimits: RateLimits, shares: ClaimShares | None = None) -> None:
        self._router = router
        self._directory = directory
        self._ratelimits = ratelimits
        #: Each claimer's share of a device's one-time keys, on the device's home
        #: (services/claim_shares.py); None: no share (the directory alone).
        self._shares = shares

    def _by_home(self, user_ids: list[int]) -> dict[str, list[int]]:
        by_home: dict[str, list[int]] = {}
        for user_id in user_ids:
            by_home.setdefault(self._router.home_of_user(user_id), []).append(user_id)
        return by_home

    async def _ask(self, home: str, method: str, body: dict[str, Any]) -> Any:
        return await self._router.ask_peer(home, method, body, what="home")

    # -- the routes' calls ----------------------------------------------------------------

    async def upload(self, upload: Upload) -> int:
        """The caller's device's keys to their home; the one-time key count there."""
        home = self._router.home_of_user(upload.identity.user_id)
        if self._router.is_local(home):
            return await self._directory.upload(upload)
        count: int = await self._ask(home, "home.keys_upload", upload_to_wire(upload))
        return count

    async def query(self, user_ids: list[int]) -> list[tuple[int, int, list[DeviceIdentity]]]:
        """Per user, in the order asked: (user, device-list version, device identities)."""
        wanted = list(dict.fromkeys(user_ids))
        found: dict[int, tuple[int, int, list[DeviceIdentity]]] = {}
        for home, users in self._by_home(wanted).items():
            if self._router.is_local(home):
                rows = self._directory.query(users)
            else:
                rows = [(int(user), int(version), [identity_from_wire(item) for item in devices])
                        for user, version, devices in await self._ask(
                            home, "home.keys_query", {"user_ids": users})]
            found.update((row[0], row) for row in rows)
        return [found[user_id] for user_id in wanted if user_id in found]

    async def claim(self, session: Session, devices: list[Device], *,
                    address: str | None) -> tuple[list[ClaimedKey], list[Device]]:
        """One key per device named; the devices without any. Charged one `keys_claim`
        token per user whose keys are claimed."""
        wanted = list(dict.fromkeys(devices))
        users = list(dict.fromkeys(user for user, _ in wanted))
        self._ratelimits.take("keys_claim", account=session.user_id, address=address,
                              cost=max(1, len(users)))
        claimed: list[ClaimedKey] = []
        missing: list[Device] = []
        for home, home_users in self._by_home(users).items():
            here = set(home_users)
            mine = [device for device in wanted if device[0] in here]
            if self._shares is not None:
                got, lacking = await self._claim_shared(home, session.user_id, mine)
            elif self._router.is_local(home):
                got, lacking = await self._directory.claim(mine)
            else:
                answer = await self._ask(home, "home.keys_claim",
                                         {"devices": [list(device) for device in mine]})
                got = [claimed_from_wire(item) for item in answer["claimed"]]
                lacking = [(int(user), int(device)) for user, device in answer["missing"]]
            claimed += got
            missing += lacking
        order = {device: index for index, device in enumerate(wanted)}
        claimed.sort(key=lambda key: order.get((key.user_id, key.device_id), 0))
        missing.sort(key=lambda device: order.get(device, 0))
        return claimed, missing

    async def _claim_shared(self, home: str, claimer: int, devices: list[Device],
                            ) -> tuple[list[ClaimedKey], list[Device]]:
        """A claim counted against `claimer`'s share of each device, on their home."""
        assert self._shares is not None
        if self._router.is_local(home):
            return await self._shares.claim(claimer, devices)
        answer = await self._ask(home, "home.keys_claim_as",
                                 {"claimer": claimer,
                                  "devices": [list(device) for device in devices]})
        return ([claimed_from_wire(item) for item in answer["claimed"]],
                [(int(user), int(device)) for user, device in answer["missing"]])

    async def identity_keys(self, user_id: int, device_id: int) -> DeviceIdentity | None:
        """The identity keys of one device of any user, from their home; None if the
        device published none (or is not that user's). For the sealed-sender
        certificate and anything else that must name a device's keys."""
        home = self._router.home_of_user(user_id)
        if self._router.is_local(home):
            return self._directory.identity_keys(user_id, device_id)
        data = await self._ask(home, "home.keys_identity",
                               {"user_id": user_id, "device_id": device_id})
        return None if data is None else identity_from_wire(data)

    async def versions(self, user_ids: list[int]) -> dict[int, int]:
        """Each user's current device-list version, from their homes."""
        versions: dict[int, int] = {}
        homes = self._by_home(list(dict.fromkeys(user_ids)))

        async def ask(home: str, users: list[int]) -> None:
            if self._router.is_local(home):
                versions.update((user, self._directory.version(user)) for user in users)
                return
            rows = await self._ask(home, "home.keys_versions", {"user_ids": users})
            versions.update((int(user), int(version)) for user, version in rows)

        if len(homes) == 1:
            [(home, users)] = homes.items()
            await ask(home, users)
            return versions
        async with trio.open_nursery() as nursery:
            for home, users in homes.items():
                nursery.start_soon(ask, home, users)
        return versions

    async def check_device_lists(self, claimed: dict[int, int] | None) -> None:
        """Before a send that names device-list versions: 409 `device_list_stale`
        naming the users whose version moved on. Nothing at all for a send without."""
        if not claimed:
            return
        stale = e2e_keys.stale_users(claimed, await self.versions(list(claimed)))
        if stale:
            raise DeviceListStale(stale)


class DeviceListNotifier:
    """On the home: tells `device_list {user_id, version}` to whoever shares a
    conversation with a user whose device list changed, and to the user's own devices.
    Changes are coalesced per user (only the newest version is told); users they block
    are not told, as they see no presence of theirs either."""

    def __init__(self, *, delivery: Delivery,
                 conversations_of: Callable[[Session], Awaitable[list[Conversation]]],
                 blocked_by: Callable[[int], Awaitable[set[int]]] | None = None) -> None:
        self._delivery = delivery
        self._conversations_of = conversations_of
        #: Whom a user blocks: they are not told (as with presence).
        self._blocked_by = blocked_by
        self._waiting: dict[int, int] = {}
        self._wake = trio.Event()

    def changed(self, user_id: int, version: int) -> None:
        self._waiting[user_id] = max(version, self._waiting.get(user_id, 0))
        self._wake.set()

    def keys_low(self, user_id: int, device_id: int, left: int, fallback_used: bool) -> None:
        self._delivery.publish_to_device(user_id, device_id,
                                         frames.keys_low_frame(left, fallback_used))

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._waiting:
                user_id, version = self._waiting.popitem()
                try:
                    await self.tell(user_id, version)
                except Exception:
                    # One user's audience that cannot be told must not stop the loop
                    # (the others still are; clients also learn it from a 409).
                    log.exception("device list of %d not told", user_id)

    async def tell(self, user_id: int, version: int) -> None:
        try:
            conversations = await self._conversations_of(Session(user_id, 0, b"", 0))
        except ChatdError as exc:
            # Told to the user's own devices at least; the others learn it at their next
            # query or from a 409 on their next send.
            log.warning("device list of %d: conversations not read (%s)", user_id,
                        exc.message)
            conversations = []
        audience: set[int] = set()
        for conversation in conversations:
            audience.update(conversation.members)
        if self._blocked_by is not None:
            audience -= await self._blocked_by(user_id)
        audience.add(user_id)
        self._delivery.publish(audience, frames.device_list_frame(user_id, version))
