"""Which devices have a live socket, for the notifier on their user's home.

The connection directory (services/delivery.py) knows users, not devices: enough to
route a delivery, not to tell a phone with no socket from a laptop with one. This keeps
the device-level part the notifier needs, the same way: each shard tells a user's home
when a device's first socket opens there and its last closes (`home.push_device`
posts), and the home drops a shard's entries when the link to it drops or it comes back
with a new boot id; a shard announces its devices again to a home whose link comes up.

    home.push_device {shard, up: bool, devices: [[user, device], ...]}   (a post)

A lost or late entry errs towards a push: a device the home does not know to be online
is pushed at once (an extra notification), one it wrongly thinks online is pushed after
`push.grace_s` (a late one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatd.services.live import Hub, LiveSession
from chatd.services.routing import Router

POST = "home.push_device"


class DeviceDirectory:
    def __init__(self, *, router: Router, hub: Hub) -> None:
        self._router = router
        self._hub = hub
        # Sockets on this shard per (user, device), for users homed elsewhere.
        self._here: dict[tuple[int, int], int] = {}
        # On the home: user -> device -> the other shards holding a socket of it.
        self._remote: dict[int, dict[int, set[str]]] = {}
        self._boot_ids: dict[str, str] = {}
        self.posts: dict[str, Callable[[dict[str, Any]], None]] = {POST: self._post}

    def online(self, user_id: int) -> set[int]:
        """The user's devices with a live socket, here or (as far as this home knows)
        on another shard."""
        devices = {session.device_id for session in self._hub.sessions_of(user_id)}
        devices.update(self._remote.get(user_id, ()))
        return devices

    # -- the shard holding the sockets ---------------------------------------------------------

    def session_changed(self, session: LiveSession, attached: bool) -> None:
        home = self._router.home_of_user(session.user_id)
        if home == self._router.shard or self._router.peers is None:
            return
        key = (session.user_id, session.device_id)
        count = self._here.get(key, 0) + (1 if attached else -1)
        if count > 0:
            self._here[key] = count
        else:
            self._here.pop(key, None)
        if (attached and count == 1) or (not attached and count <= 0):
            self._router.peers.post(home, POST, {
                "shard": self._router.shard, "up": attached, "devices": [list(key)]})

    def peer_up(self, peer: str, boot_id: str) -> None:
        if self._boot_ids.get(peer) != boot_id:
            self._forget(peer)
            self._boot_ids[peer] = boot_id
        devices = [list(key) for key in self._here
                   if self._router.home_of_user(key[0]) == peer]
        if devices and self._router.peers is not None:
            self._router.peers.post(peer, POST, {"shard": self._router.shard, "up": True,
                                                 "devices": devices})

    def peer_down(self, peer: str) -> None:
        self._forget(peer)

    # -- the home ---------------------------------------------------------------------------------

    def _post(self, body: dict[str, Any]) -> None:
        shard, up, devices = body.get("shard"), body.get("up"), body.get("devices")
        if not isinstance(shard, str) or not isinstance(up, bool) \
                or not isinstance(devices, list):
            raise ValueError("a device post needs shard, up and devices")
        for pair in devices:
            if not (isinstance(pair, list) and len(pair) == 2 and all(
                    isinstance(part, int) and not isinstance(part, bool) for part in pair)):
                raise ValueError("devices: expected [user, device] pairs")
            user_id, device_id = pair
            if up:
                self._remote.setdefault(user_id, {}).setdefault(device_id, set()).add(shard)
                continue
            shards = self._remote.get(user_id, {}).get(device_id)
            if shards is not None:
                shards.discard(shard)
                if not shards:
                    del self._remote[user_id][device_id]
                    if not self._remote[user_id]:
                        del self._remote[user_id]

    def _forget(self, peer: str) -> None:
        for user_id in list(self._remote):
            devices = self._remote[user_id]
            for device_id in list(devices):
                devices[device_id].discard(peer)
                if not devices[device_id]:
                    del devices[device_id]
            if not devices:
                del self._remote[user_id]
