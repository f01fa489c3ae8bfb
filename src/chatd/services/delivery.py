"""Getting frames to users wherever their sockets are: the connection directory.

Each user's home shard keeps the directory of which shards hold that user's live
sockets (its own `Hub` for sockets here, and entries other shards announce). Fan-out
goes to the recipients' homes, grouped, and each home forwards to the shards its
directory names, so an owner never needs to know where anybody is connected:

    owner --DELIVER--> home --DELIVER--> the shard holding the socket --> LiveSession

(one hop fewer when the home holds the socket, none at all on one shard). Entries are
tagged by the announcing shard: when a peer goes down, or comes back with a new boot
id, its entries are dropped, and a shard re-announces its users to a home that comes
back. A lost delivery is never a lost message: sessions notice the gap by seq and read
the missing range from the owner (services/live.py). Typing, presence and profile
events take the same path and are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from chatd.domain.models import Message
from chatd.protocol import owner as ops
from chatd.protocol.frames import OutFrame
from chatd.services.live import Hub
from chatd.services.routing import Router

log = logging.getLogger(__name__)

#: Envelope kinds on the wire (`DELIVER` body: {"kind", "data", "users"}).
MESSAGE = "message"      # data: a message (protocol/owner.py message_to_wire)
FRAME = "frame"          # data: a server frame's payload, queued like any reply
EPHEMERAL = "ephemeral"  # data: a frame payload a backlogged session may drop
RECEIPT = "receipt"      # data: [conversation, reader, delivered, read or None, moved]
PROFILE = "profile"      # data: [frame payload, user, shows_reads, hides_last_seen]
CLOSE_DEVICE = "close_device"  # data: [user, device]: it was logged out
RECHECK = "recheck"      # data: a shard: deliveries from it may have been lost
#: data: [user, change, peer]: "contact" (the pair accepted a request), "block" (user
#: blocked peer): the sessions' presence audiences follow (services/live.py).
PRIVACY = "privacy"
#: data: [device, frame payload]: a frame for one device's sockets only (`keys_low`).
DEVICE_FRAME = "device_frame"

#: Mesh methods (posts).
DELIVER = "deliver"           # to a home: route to wherever the users are connected
DELIVER_HERE = "deliver_here"  # to a connection shard: hand to local sessions
ATTACH = "directory.attach"   # {"users": [...]}: the sender now holds their sockets
DETACH = "directory.detach"   # {"users": [...]}: it holds none any more
#: Mesh request: which of these users (homed at the receiver) are online anywhere.
ONLINE = "directory.online"
#: Mesh request: {"user"}: whether a shard other than the asking one holds their sockets.
ELSEWHERE = "directory.elsewhere"


class Delivery:
    def __init__(self, *, router: Router, hub: Hub) -> None:
        self._router = router
        self._hub = hub
        # Users homed here with sockets on other shards: user -> those shards.
        self._remote: dict[int, set[str]] = {}
        # Boot ids of peers as last seen (a new one clears that shard's entries).
        self._boot_ids: dict[str, str] = {}
        #: Called with (users homed here, a getter of the message) for every durable
        #: message that reaches this home, whether or not they are online: the push
        #: notifier's seam (services/push/notifier.py).
        self.home_message_listeners: list[Callable[[list[int], Callable[[], Message]], None]] = []
        #: Kinds other services deliver (kind -> handler of (data, users) on the shard
        #: holding the sockets): "to_device" (services/to_device.py).
        self.kinds: dict[str, Callable[[Any, list[int]], None]] = {}

    # -- the owner's side: publish to users, wherever they are --------------------------------

    def publish_message(self, message: Message, recipients: Iterable[int]) -> None:
        if self._router.peers is None:
            if self.home_message_listeners:
                recipients = list(recipients)
                self._tell_home_listeners(recipients, lambda: message)
            self._hub.deliver_message(message, recipients)
            return
        self._send(MESSAGE, message, ops.message_to_wire, recipients)

    def publish(self, user_ids: Iterable[int], frame: OutFrame) -> None:
        if self._router.peers is None:
            self._hub.deliver(user_ids, frame)
            return
        self._send(FRAME, frame, _payload, user_ids)

    def publish_ephemeral(self, user_ids: Iterable[int], frame: OutFrame) -> None:
        if self._router.peers is None:
            self._hub.deliver_ephemeral(user_ids, frame)
            return
        self._send(EPHEMERAL, frame, _payload, user_ids)

    def publish_receipt(self, user_ids: Iterable[int], conversation_id: int, reader: int,
                        delivered_seq: int, read_seq: int | None, delivery_moved: bool) -> None:
        data = [conversation_id, reader, delivered_seq, read_seq, delivery_moved]
        if self._router.peers is None:
            self._hub.deliver_receipt(user_ids, *data)  # type: ignore[arg-type]
            return
        self._send(RECEIPT, data, _same, user_ids)

    def publish_profile(self, user_ids: Iterable[int], frame: OutFrame, user_id: int,
                        shows_reads: bool, hides_last_seen: bool,
                        last_seen: str | None = None) -> None:
        data: list[Any] = [frame.payload, user_id, shows_reads, hides_last_seen]
        if last_seen is not None:
            data.append(last_seen)
        if self._router.peers is None:
            self._hand_over(PROFILE, data, list(user_ids))
            return
        self._send(PROFILE, data, _same, user_ids)

    def publish_privacy(self, user_ids: Iterable[int], data: list[Any]) -> None:
        """A change to who are contacts (services/direct_requests.py) for the pair's
        sessions."""
        if self._router.peers is None:
            self._hand_over(PRIVACY, data, list(user_ids))
            return
        self._send(PRIVACY, data, _same, user_ids)

    def publish_kind(self, kind: str, user_ids: Iterable[int], value: Any,
                     to_wire: Callable[[Any], Any]) -> None:
        """A kind of `kinds` for the users' sessions, wherever they are: `value` is
        handed as it is to a handler on this shard, as `to_wire(value)` across the mesh."""
        if self._router.peers is None:
            self.kinds[kind](value, list(user_ids))
            return
        self._send(kind, value, to_wire, user_ids)

    def close_device(self, user_id: int, device_id: int) -> None:
        """A revoked device's sockets are closed (4001), wherever they are."""
        if self._router.peers is None:
            self._hub.close_device(user_id, device_id)
            return
        self._send(CLOSE_DEVICE, [user_id, device_id], _same, [user_id])

    def publish_to_device(self, user_id: int, device_id: int, frame: OutFrame) -> None:
        """A frame for one device's sockets, wherever they are (queued like a reply)."""
        data = [device_id, frame.payload]
        if self._router.peers is None:
            self._hand_over(DEVICE_FRAME, data, [user_id])
            return
        self._send(DEVICE_FRAME, data, _same, [user_id])

    def _send(self, kind: str, value: Any, to_wire: Any, user_ids: Iterable[int]) -> None:
        by_home: dict[str, list[int]] = {}
        for user_id in user_ids:
            by_home.setdefault(self._router.home_of_user(user_id), []).append(user_id)
        wire = None
        for home, users in by_home.items():
            if home == self._router.shard:
                self._route_homed_here(kind, value, to_wire, users)
                continue
            if wire is None:
                wire = to_wire(value)
            assert self._router.peers is not None
            self._router.peers.post(home, DELIVER, {"kind": kind, "data": wire, "users": users})

    def _route_homed_here(self, kind: str, value: Any, to_wire: Any,
                          users: list[int], *, is_wire: bool = False) -> None:
        """Users homed here: to this shard's sessions, and to the shards the directory
        names for them. `value` is the object itself, or (`is_wire`) its wire form."""
        if kind == MESSAGE and self.home_message_listeners:
            self._tell_home_listeners(users, _message_getter(value, is_wire))
        by_shard: dict[str, list[int]] = {}
        for user_id in users:
            for shard in self._remote.get(user_id, ()):
                by_shard.setdefault(shard, []).append(user_id)
        local = [user_id for user_id in users if self._hub.is_online(user_id)]
        if local:
            if is_wire:
                self._hand_over(kind, value, local)
            else:
                self._hand_over_value(kind, value, local)
        if by_shard:
            wire = to_wire(value)
            assert self._router.peers is not None
            for shard, shard_users in by_shard.items():
                self._router.peers.post(shard, DELIVER_HERE,
                                        {"kind": kind, "data": wire, "users": shard_users})

    def _hand_over_value(self, kind: str, value: Any, users: list[int]) -> None:
        if kind == MESSAGE:
            self._hub.deliver_message(value, users)
        elif kind == FRAME:
            self._hub.deliver(users, value)
        elif kind == EPHEMERAL:
            self._hub.deliver_ephemeral(users, value)
        else:
            self._hand_over(kind, value, users)

    def _hand_over(self, kind: str, data: Any, users: list[int]) -> None:
        """Hand a wire envelope to this shard's sessions."""
        if kind == MESSAGE:
            self._hub.deliver_message(ops.message_from_wire(data), users)
        elif kind == FRAME:
            self._hub.deliver(users, OutFrame(data))
        elif kind == EPHEMERAL:
            self._hub.deliver_ephemeral(users, OutFrame(data))
        elif kind == RECEIPT:
            conversation_id, reader, delivered, read, moved = data
            self._hub.deliver_receipt(users, conversation_id, reader, delivered, read,
                                      bool(moved))
        elif kind == PROFILE:
            payload, user_id, shows_reads, hides_last_seen, *rest = data
            self._hub.profile_changed(user_id, bool(shows_reads), bool(hides_last_seen),
                                      str(rest[0]) if rest else None)
            self._hub.deliver(users, OutFrame(payload))
        elif kind == PRIVACY:
            user, change, peer = data
            self._hub.privacy_changed(users, int(user), str(change), int(peer))
        elif kind == RECHECK:
            if not isinstance(data, str):
                raise ValueError("a recheck names a shard")
            for user_id in users:
                for session in self._hub.sessions_of(user_id):
                    session.recheck(
                        conversation_id for conversation_id in session.following()
                        if self._router.owner_of_conversation(conversation_id) == data)
        elif kind == CLOSE_DEVICE:
            user_id, device_id = data
            self._hub.close_device(user_id, device_id)
        elif kind in self.kinds:
            self.kinds[kind](data, users)
        elif kind == DEVICE_FRAME:
            device_id, payload = data
            self._hub.deliver_to_device(users, int(device_id), OutFrame(payload))
        else:
            raise ValueError(f"unknown delivery kind {kind!r}")

    def _tell_home_listeners(self, users: list[int], message: Callable[[], Message]) -> None:
        for listener in self.home_message_listeners:
            try:
                listener(users, message)
            except Exception:  # a notifier's bug must not stop the delivery
                log.exception("a home message listener failed")

    # -- the mesh's side ------------------------------------------------------------------------

    def deliver_from_peer(self, body: Any) -> None:
        """DELIVER: a peer publishes to users homed here."""
        kind, data, users = _envelope(body)
        self._route_homed_here(kind, data, _same, users, is_wire=True)

    def deliver_here_from_peer(self, body: Any) -> None:
        """DELIVER_HERE: a home forwards to sessions on this shard."""
        kind, data, users = _envelope(body)
        self._hand_over(kind, data, users)

    def attach_from_peer(self, peer: str, body: Any) -> None:
        for user_id in _users(body):
            self._remote.setdefault(user_id, set()).add(peer)

    def detach_from_peer(self, peer: str, body: Any) -> None:
        for user_id in _users(body):
            shards = self._remote.get(user_id)
            if shards is not None:
                shards.discard(peer)
                if not shards:
                    del self._remote[user_id]

    def elsewhere_from_peer(self, peer: str, body: Any) -> bool:
        user_id = body.get("user") if isinstance(body, dict) else None
        if not isinstance(user_id, int) or isinstance(user_id, bool):
            raise ValueError("user must be an id")
        return self._hub.is_online(user_id) or bool(self._remote.get(user_id, set()) - {peer})

    def online_from_peer(self, body: Any) -> list[int]:
        return [user_id for user_id in _users(body) if self.is_online_here_or_known(user_id)]

    def is_online_here_or_known(self, user_id: int) -> bool:
        return self._hub.is_online(user_id) or user_id in self._remote

    # -- this shard's sockets -------------------------------------------------------------------

    def came_online(self, user_id: int) -> None:
        """The user's first socket here: tell their home (if that is another shard)."""
        home = self._router.home_of_user(user_id)
        if home != self._router.shard and self._router.peers is not None:
            self._router.peers.post(home, ATTACH, {"users": [user_id]})

    def went_offline(self, user_id: int) -> None:
        home = self._router.home_of_user(user_id)
        if home != self._router.shard and self._router.peers is not None:
            self._router.peers.post(home, DETACH, {"users": [user_id]})

    async def online_elsewhere(self, user_id: int) -> bool:
        """Whether a shard other than this one holds a socket of the user: their home
        decides (its directory sees every shard), so a user with sockets on two shards
        comes online once and goes offline once. Asked after this shard's attach or
        detach, which the home has then applied (one link keeps the order)."""
        home = self._router.home_of_user(user_id)
        if home == self._router.shard:
            return bool(self._remote.get(user_id))
        peers = self._router.peers
        if peers is None or not peers.is_up(home):
            return False  # its home cannot say: this shard's view decides
        try:
            answer = await peers.start_request(home, ELSEWHERE, {"user": user_id}).wait()
        except Exception:  # presence is best effort
            log.debug("presence: home %s did not answer", home)
            return False
        return bool(answer)

    async def online_among(self, user_ids: Iterable[int]) -> set[int]:
        """Which of these users have a socket anywhere (asking their homes)."""
        online: set[int] = set()
        by_home: dict[str, list[int]] = {}
        for user_id in user_ids:
            home = self._router.home_of_user(user_id)
            if home == self._router.shard:
                if self.is_online_here_or_known(user_id):
                    online.add(user_id)
            else:
                by_home.setdefault(home, []).append(user_id)
        peers = self._router.peers
        for home, users in by_home.items():
            if peers is None or not peers.is_up(home):
                continue
            try:
                answer = await peers.start_request(home, ONLINE, {"users": users}).wait()
            except Exception:  # presence is best effort
                log.debug("presence: home %s did not answer", home)
                continue
            online.update(user_id for user_id in answer if isinstance(user_id, int))
        return online

    def peer_up(self, peer: str, boot_id: str) -> None:
        """A link to `peer` came up: a new boot id means its sockets are all new, so its
        entries go; and our users homed there are announced again (it may have
        restarted, or dropped what we posted while the link was down)."""
        if self._boot_ids.get(peer) != boot_id:
            self._forget_shard(peer)
            self._boot_ids[peer] = boot_id
        users = [user_id for user_id in self._hub.online_users()
                 if self._router.home_of_user(user_id) == peer]
        if users and self._router.peers is not None:
            self._router.peers.post(peer, ATTACH, {"users": users})
        # What was published while the link was down went nowhere: sessions check the
        # conversations whose messages came over it (owned there, or relayed by a home
        # there) and read what they missed.
        for session in self._hub.all_sessions():
            homed_there = self._router.home_of_user(session.user_id) == peer
            session.recheck(
                conversation_id for conversation_id in session.following()
                if homed_there or self._router.owner_of_conversation(conversation_id) == peer)
        # And sessions elsewhere whose deliveries from `peer` came through here.
        by_shard: dict[str, list[int]] = {}
        for user_id, shards in self._remote.items():
            for shard in shards:
                if shard != peer:
                    by_shard.setdefault(shard, []).append(user_id)
        if self._router.peers is not None:
            for shard, shard_users in by_shard.items():
                self._router.peers.post(shard, DELIVER_HERE,
                                        {"kind": RECHECK, "data": peer, "users": shard_users})

    def peer_down(self, peer: str) -> None:
        """Its sockets are unreachable now; they reconnect (here or there) and catch up."""
        self._forget_shard(peer)

    def _forget_shard(self, peer: str) -> None:
        for user_id in [user_id for user_id, shards in self._remote.items() if peer in shards]:
            shards = self._remote[user_id]
            shards.discard(peer)
            if not shards:
                del self._remote[user_id]


def _message_getter(value: Any, is_wire: bool) -> Callable[[], Message]:
    """The message, decoded from its wire form at most once, and only if asked."""
    if not is_wire:
        return lambda: value
    decoded: list[Message] = []

    def get() -> Message:
        if not decoded:
            decoded.append(ops.message_from_wire(value))
        return decoded[0]

    return get


def _payload(frame: OutFrame) -> Any:
    return frame.payload


def _same(value: Any) -> Any:
    return value


def _envelope(body: Any) -> tuple[str, Any, list[int]]:
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
        raise ValueError("a delivery needs a kind, data and users")
    return body["kind"], body.get("data"), _users(body)


def _users(body: Any) -> list[int]:
    users = body.get("users") if isinstance(body, dict) else None
    if not isinstance(users, list) or not all(
            isinstance(user, int) and not isinstance(user, bool) for user in users):
        raise ValueError("users must be a list of ids")
    return users

