"""To-device messages: a queue per target device on its user's home, until acknowledged.

End-to-end encryption needs a way to hand one device something no conversation should
hold: Olm pre-key messages, Megolm session keys, sealed-sender envelopes. Like Matrix's
`sendToDevice`, they wait in a queue per device and are deleted once the device says it
has them.

    client --POST /to_device--> any shard --home.to_device_put--> each target's home
    home: one batch per request (entries, the queue's head, the txn row), then
    home --Delivery kind "to_device"--> the shards holding the device's sockets
    socket shard: `ToDeviceFeeds` hands them to that device's sessions, in id order

Ids grow per device (1, 2, 3 …; never reused, `to_device_heads` keeps the last), so a
session delivers exactly the next id and asks the home for the rest when it sees a gap
(a delivery lost with a mesh link): `ToDeviceFeeds`, below. On (re)connect a session
first reads everything still queued, then goes live; a frame that arrives both ways is
sent once. Across a reconnect a client may be sent again what it had not acknowledged:
it drops ids it has seen (`chatd.client` does).

`ToDeviceHome` is the home's side (its `home.to_device_*` requests are added to
`HomeApi`'s); `ToDevice` is the client's side on any shard. Wire forms:

    home.to_device_put {sender_user, sender_device, txn_id, messages: [[user, device
        (0: every device), type, content], ...]} -> messages queued
    home.to_device_fetch {user_id, device_id, after, limit} -> [entries, landed head, more]
    home.to_device_ack {user_id, device_id, up_to} -> None

An entry on the wire is [id, sender user (0: none), sender device, type, content].
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from chatd.config import ToDeviceConfig
from chatd.domain.models import Session
from chatd.errors import BadRequest, ChatdError, Conflict
from chatd.protocol import frames
from chatd.protocol.frames import OutFrame
from chatd.services import shard_calls
from chatd.services.accounts import AccountService
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.live import Hub, LiveSession
from chatd.services.peer_bodies import int_field as _int
from chatd.services.ratelimits import RateLimits
from chatd.services.routing import Router
from chatd.storage import Batch, Store, records
from chatd.storage.errors import UnstorableValue

log = logging.getLogger(__name__)

#: The Delivery kind (services/delivery.py) that carries entries to a device's sessions:
#: data [device_id, [entry, ...]].
KIND = "to_device"
#: The `type` of a sealed-sender message (services/sealed_sender.py): no sender fields.
SEALED_TYPE = "sealed"
#: Entries and bytes one fetch answers at most (a mesh frame and a WebSocket write stay
#: small; the reader asks again).
FETCH_LIMIT = 100
FETCH_BYTES = 256 * 1024
#: A type is a short name, as Matrix's event types ("m.room_key", "chatd.olm").
MAX_TYPE_LENGTH = 128
#: Devices one request may name (after "*" is expanded at each home, still checked).
MAX_TARGETS = 10_000
#: Retries are recognised for at least this many recent txn_ids per sending device at
#: each home; past twice as many, the oldest half is forgotten.
TXN_KEEP = 500
#: Queues kept in memory (counts and sizes), cleared past this.
_CACHE = 50_000


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    sender_user: int  # 0: sealed, no sender
    sender_device: int
    type: str
    content: Any

    def to_wire(self) -> list[Any]:
        return [self.id, self.sender_user, self.sender_device, self.type, self.content]

    @classmethod
    def from_wire(cls, data: Any) -> Entry:
        if not isinstance(data, list) or len(data) != 5:
            raise ValueError("a to-device entry is [id, user, device, type, content]")
        to_device_id, user, device, kind, content = data
        if not all(isinstance(value, int) and not isinstance(value, bool)
                   for value in (to_device_id, user, device)) or not isinstance(kind, str):
            raise ValueError("a to-device entry has the wrong types")
        return cls(to_device_id, user, device, kind, content)

    def frame(self) -> OutFrame:
        if self.sender_user:
            return frames.to_device_frame(self.id, self.sender_user, self.sender_device,
                                          self.type, self.content)
        return frames.to_device_frame(self.id, None, None, self.type, self.content)


class _Queue:
    """One device's queue as the home holds it in memory: the last id given (written or
    landed), (id, bytes, sender user, queued at ms) of each entry still queued, in id
    order, and per sender user (0: sealed, one anonymous sender) its [messages, bytes]
    queued, so no one sender can fill the queue for everyone else."""

    __slots__ = ("by_sender", "bytes", "entries", "head")

    def __init__(self, head: int, entries: Iterable[tuple[int, int, int, int]]) -> None:
        self.head = head
        self.entries: deque[tuple[int, int, int, int]] = deque()
        self.bytes = 0
        self.by_sender: dict[int, list[int]] = {}
        for entry in entries:
            self.append(*entry)

    def append(self, to_device_id: int, size: int, sender: int, queued_ms: int) -> None:
        self.entries.append((to_device_id, size, sender, queued_ms))
        self.bytes += size
        share = self.by_sender.setdefault(sender, [0, 0])
        share[0] += 1
        share[1] += size

    def popleft(self) -> int:
        """The oldest entry leaves; its id."""
        to_device_id, size, sender, _ = self.entries.popleft()
        self.bytes -= size
        share = self.by_sender.get(sender)
        if share is not None:
            share[0] -= 1
            share[1] -= size
            if share[0] <= 0:
                del self.by_sender[sender]
        return to_device_id


def _loaded(key: bytes, value: bytes) -> tuple[int, int, int, int]:
    """A stored row as a `_Queue` entry."""
    fields = _row_fields(records.unpack(value))
    return records.read_u64(key, 16), len(value), fields[0], fields[4]


def _row_fields(value: Any) -> tuple[int, int, str, Any, int]:
    """A stored entry: [sender user, sender device, type, content, queued at ms]. Rows
    written before entries expired have no time (0: never expires)."""
    sender_user, sender_device, kind, content = value[:4]
    queued_ms = value[4] if len(value) > 4 and isinstance(value[4], int) else 0
    return sender_user, sender_device, kind, content, queued_ms


# -- the home's side ----------------------------------------------------------------------------


class ToDeviceHome:
    """The queues of the devices of users homed on this shard."""

    def __init__(self, *, store: Store, commands: Commands, accounts: AccountService,
                 config: ToDeviceConfig, clock: Clock,
                 publish: Callable[[int, int, list[Entry]], None]) -> None:
        self._store = store
        self._commands = commands
        self._accounts = accounts
        self._config = config
        self._clock = clock
        #: (user, device, entries): hand landed entries to the device's sessions.
        self._publish = publish
        self._queues: dict[tuple[int, int], _Queue] = {}
        #: txn rows written by batches that may not have landed yet (and recent ones).
        self._txns: dict[tuple[int, int, str], int] = {}
        #: txn rows per sending device on this home, once counted.
        self._txn_counts: dict[tuple[int, int], int] = {}
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "home.to_device_put": self._put_request,
            "home.to_device_fetch": self._fetch_request,
            "home.to_device_ack": self._ack_request,
        }

    def forget_pending(self) -> None:
        """After a failed batch write: read the queues again from disk."""
        self._queues.clear()
        self._txns.clear()
        self._txn_counts.clear()

    def _queue(self, user_id: int, device_id: int) -> _Queue:
        queue = self._queues.get((user_id, device_id))
        if queue is None:
            head = self._store.get(records.TO_DEVICE_HEADS, (user_id, device_id)) or 0
            rows = self._store.scan_raw_prefix(records.TO_DEVICE.name,
                                               records.pair(user_id, device_id))
            queue = _Queue(head, (_loaded(key, value) for key, value in rows))
            if len(self._queues) >= _CACHE:
                self._queues.clear()
            self._queues[(user_id, device_id)] = queue
        return queue

    # -- queueing ---------------------------------------------------------------------------

    async def put(self, sender_user: int, sender_device: int, txn_id: str,
                  messages: list[tuple[int, int, str, Any]]) -> int:
        """Queue `messages` ([(user, device or 0 for all of the user's devices, type,
        content)]) for users homed here, all or none; the number queued. A txn_id seen
        before from this sending device queues nothing and answers as the first time.
        Unknown users and devices are skipped (as Matrix does); a full queue refuses the
        whole request with 409 `to_device_queue_full`."""
        for _, _, kind, content in messages:
            check_message(kind, content, self._config, sealed=sender_user == 0)
        published: list[tuple[int, int, list[Entry]]] = []

        def apply(batch: Batch) -> int:
            published.clear()
            txn_key = (sender_user, sender_device, txn_id)
            if txn_id:
                seen = self._txn_seen(txn_key)
                if seen is not None:
                    return seen
            targets = self._expand(messages)
            now = self._clock.now_ms()
            planned = self._plan(batch, targets, sender_user, now)
            queued = 0
            for (user_id, device_id), items in planned.items():
                queue = self._queue(user_id, device_id)
                entries = []
                for kind, content, packed in items:
                    queue.head += 1
                    entry = Entry(queue.head, sender_user, sender_device, kind, content)
                    batch.put(records.TO_DEVICE, (user_id, device_id, entry.id),
                              [sender_user, sender_device, kind, content, now])
                    queue.append(entry.id, len(packed), sender_user, now)
                    entries.append(entry)
                    queued += 1
                batch.put(records.TO_DEVICE_HEADS, (user_id, device_id), queue.head)
                published.append((user_id, device_id, entries))
            if txn_id:
                batch.put(records.TO_DEVICE_TXNS, txn_key, [now, queued])
                self._txns[txn_key] = queued
                self._count_txn(batch, sender_user, sender_device)
            return queued

        pending = self._commands.enqueue(apply)
        # Published in batch order, as each lands (a callback, not after the await: two
        # requests' tasks may resume in either order).
        pending.add_done_callback(lambda done: self._published(done, published))
        return await pending.wait()

    def _published(self, done: Any, published: list[tuple[int, int, list[Entry]]]) -> None:
        if done.error is None:
            for user_id, device_id, entries in published:
                self._publish(user_id, device_id, entries)

    def _txn_seen(self, key: tuple[int, int, str]) -> int | None:
        if key in self._txns:
            return self._txns[key]
        row = self._store.get(records.TO_DEVICE_TXNS, key)
        if isinstance(row, list) and len(row) == 2 and isinstance(row[1], int):
            return row[1]
        return None

    def _count_txn(self, batch: Batch, sender_user: int, sender_device: int) -> None:
        """Keep the newest TXN_KEEP..2*TXN_KEEP txn rows of a sending device here."""
        key = (sender_user, sender_device)
        count = self._txn_counts.get(key)
        if count is None:
            count = len(self._store.scan_raw_prefix(records.TO_DEVICE_TXNS.name,
                                                    records.pair(*key)))
        count += 1
        if count > 2 * TXN_KEEP:
            rows = self._store.scan(records.TO_DEVICE_TXNS, records.pair(*key))
            rows.sort(key=lambda row: row[1][0] if isinstance(row[1], list) else 0)
            for txn_key, _ in rows[:len(rows) - TXN_KEEP]:
                batch.delete(records.TO_DEVICE_TXNS, txn_key)
                self._txns.pop(txn_key, None)
            count = min(count, TXN_KEEP + 1)
        self._txn_counts[key] = count
        if len(self._txns) >= _CACHE:
            self._txns.clear()

    def _expand(self, messages: list[tuple[int, int, str, Any]],
                ) -> list[tuple[int, int, str, Any]]:
        """"*" (device 0) as every device of the user; unknown users and devices left out."""
        devices: dict[int, set[int]] = {}
        targets: list[tuple[int, int, str, Any]] = []
        for user_id, device_id, kind, content in messages:
            known = devices.get(user_id)
            if known is None:
                known = devices[user_id] = self._devices_of(user_id)
            if device_id == 0:
                targets.extend((user_id, device, kind, content) for device in sorted(known))
            elif device_id in known:
                targets.append((user_id, device_id, kind, content))
        if len(targets) > MAX_TARGETS:
            raise BadRequest(f"messages: at most {MAX_TARGETS} target devices in one request",
                             code="too_many_targets")
        return targets

    def _devices_of(self, user_id: int) -> set[int]:
        try:
            return {device.device_id for device in self._accounts.list_devices(
                Session(user_id, 0, b"", 0))}
        except ChatdError:
            return set()

    def _expired(self, queue: _Queue, now: int) -> list[tuple[int, int, int, int]]:
        """The queue's entries older than `to_device.ttl`. Entries are in id order, so
        the expired ones lead."""
        cutoff = now - int(self._config.ttl * 1000)
        expired = []
        for entry in queue.entries:
            if not 0 < entry[3] <= cutoff:
                break
            expired.append(entry)
        return expired

    def _plan(self, batch: Batch, targets: list[tuple[int, int, str, Any]],
              sender_user: int, now: int,
              ) -> dict[tuple[int, int], list[tuple[str, Any, bytes]]]:
        """The entries per queue, checked against the caps before anything changes:
        the sender's share of each queue first, then the queue's own caps."""
        planned: dict[tuple[int, int], list[tuple[str, Any, bytes]]] = {}
        for user_id, device_id, kind, content in targets:
            packed = records.pack([0, 0, kind, content, now])
            planned.setdefault((user_id, device_id), []).append((kind, content, packed))
        sweeps: list[tuple[int, int, int]] = []
        for (user_id, device_id), items in planned.items():
            queue = self._queue(user_id, device_id)
            # Expired entries hold no cap; they are dropped below, once the request is
            # known to pass (a refusal rolls the batch back, and must leave the queue be).
            expired = self._expired(queue, now)
            sweeps.append((user_id, device_id, len(expired)))
            added = sum(len(packed) for _, _, packed in items)
            mine = [entry for entry in expired if entry[2] == sender_user]
            share = queue.by_sender.get(sender_user, [0, 0])
            share_count = share[0] - len(mine)
            share_bytes = share[1] - sum(entry[1] for entry in mine)
            if (share_count + len(items) > self._config.max_messages_per_sender
                    or share_bytes + added > self._config.max_bytes_per_sender):
                who = "sealed senders" if sender_user == 0 else f"user {sender_user}"
                raise Conflict(
                    f"{who} already queued their share for device {device_id} of user "
                    f"{user_id} (at most {self._config.max_messages_per_sender} messages "
                    f"and {self._config.max_bytes_per_sender} bytes from one sender wait "
                    "until that device acknowledges them); try again later",
                    code="to_device_sender_share_full")
            count = len(queue.entries) - len(expired) + len(items)
            size = queue.bytes - sum(entry[1] for entry in expired) + added
            if count > self._config.max_messages or size > self._config.max_bytes:
                raise Conflict(
                    f"the to-device queue of device {device_id} of user {user_id} is full "
                    f"(at most {self._config.max_messages} messages and "
                    f"{self._config.max_bytes} bytes wait until that device acknowledges "
                    "them); try again later", code="to_device_queue_full")
        # The sweep: each queue a send adds to loses its expired entries in the same
        # write (`fetch` skips them meanwhile, an ack deletes them too).
        for user_id, device_id, count in sweeps:
            queue = self._queue(user_id, device_id)
            for _ in range(count):
                batch.delete(records.TO_DEVICE, (user_id, device_id, queue.popleft()))
        return planned

    # -- reading and acknowledging ------------------------------------------------------------

    def fetch(self, user_id: int, device_id: int, after: int,
              limit: int = FETCH_LIMIT) -> tuple[list[Entry], int, bool]:
        """Landed entries after id `after` (at most `limit`, about FETCH_BYTES), the last
        id whose batch landed, and whether more are queued past these (else the reader
        has everything up to that id)."""
        # Both read from the store with no await between: one consistent view of what
        # landed (a batch writes its entries and the head together).
        head = self._store.get(records.TO_DEVICE_HEADS, (user_id, device_id)) or 0
        cutoff = self._clock.now_ms() - int(self._config.ttl * 1000)
        entries: list[Entry] = []
        size = 0
        while True:
            rows = self._store.range(records.TO_DEVICE,
                                     records.triple(user_id, device_id, after + 1),
                                     records.triple(user_id, device_id, records.MAX_U64),
                                     limit=limit + 1)
            taken = 0
            for (_, _, to_device_id), value in rows[:limit]:
                taken += 1
                after = to_device_id
                sender_user, sender_device, kind, content, queued_ms = _row_fields(value)
                if 0 < queued_ms <= cutoff:
                    continue  # expired: never delivered; the next send or ack deletes it
                entries.append(Entry(to_device_id, sender_user, sender_device, kind, content))
                size += len(records.pack(content))
                if size >= FETCH_BYTES:
                    break
            more = len(rows) > taken
            # A page of nothing but expired entries says nothing yet: read on past it
            # (the reader takes an empty answer as "up to head").
            if entries or not more:
                return entries, head, more

    async def ack(self, user_id: int, device_id: int, up_to: int) -> None:
        """Delete the device's entries up to id `up_to`. A lost ack (a crash before it
        lands) only means the device is sent them again, and drops them by id."""
        def apply(batch: Batch) -> None:
            queue = self._queue(user_id, device_id)
            while queue.entries and queue.entries[0][0] <= up_to:
                to_device_id = queue.popleft()
                batch.delete(records.TO_DEVICE, (user_id, device_id, to_device_id))

        await self._commands.submit(apply)

    def delete_device(self, batch: Batch, user_id: int, device_id: int) -> None:
        """A device is deleted in `batch` (logout, revocation, expiry, erasure:
        AccountService.device_deleters): its queue and head go in the same write."""
        self._drop(batch, user_id, device_id)

    def _drop(self, batch: Batch, user_id: int, device_id: int) -> None:
        for key, _ in self._store.scan_raw_prefix(records.TO_DEVICE.name,
                                                  records.pair(user_id, device_id)):
            batch.delete(records.TO_DEVICE, (user_id, device_id, records.read_u64(key, 16)))
        batch.delete(records.TO_DEVICE_HEADS, (user_id, device_id))
        self._queues.pop((user_id, device_id), None)

    async def erase_user(self, user_id: int) -> None:
        """GDPR erasure (AccountAdmin.erase_hooks): every queue of the user's devices,
        and the txn rows of their sending devices here."""
        def apply(batch: Batch) -> None:
            devices = {device for (_, device), _ in self._store.scan(
                records.TO_DEVICE_HEADS, records.u64(user_id))}
            devices.update(records.read_pair(key)[1] for key, _ in self._store.scan_raw_prefix(
                records.TO_DEVICE.name, records.u64(user_id)))
            for device_id in devices:
                self._drop(batch, user_id, device_id)
            for key, _ in self._store.scan(records.TO_DEVICE_TXNS, records.u64(user_id)):
                batch.delete(records.TO_DEVICE_TXNS, key)
                self._txns.pop(key, None)
            for sender in [key for key in self._txn_counts if key[0] == user_id]:
                del self._txn_counts[sender]

        await self._commands.submit(apply)

    # -- home.* requests ------------------------------------------------------------------------

    async def _put_request(self, body: dict[str, Any]) -> int:
        raw = body.get("messages")
        if not isinstance(raw, list):
            raise BadRequest("messages: expected a list", code="malformed_command")
        messages = []
        for item in raw:
            if not (isinstance(item, list) and len(item) == 4 and all(
                    isinstance(part, int) and not isinstance(part, bool) for part in item[:2])
                    and isinstance(item[2], str)):
                raise BadRequest("messages: [[user, device, type, content], ...]",
                                 code="malformed_command")
            messages.append((item[0], item[1], item[2], item[3]))
        txn_id = body.get("txn_id")
        if not isinstance(txn_id, str):
            raise BadRequest("txn_id: expected a string", code="malformed_command")
        # Shielded: once queued it is published, whatever the request's deadline does.
        with trio.CancelScope(shield=True):
            queued = await self.put(_int(body, "sender_user"), _int(body, "sender_device"),
                                    txn_id, messages)
        return queued

    def _fetch_request(self, body: dict[str, Any]) -> list[Any]:
        limit = max(1, min(FETCH_LIMIT, _int(body, "limit")))
        entries, head, more = self.fetch(_int(body, "user_id"), _int(body, "device_id"),
                                         _int(body, "after"), limit)
        return [[entry.to_wire() for entry in entries], head, more]

    async def _ack_request(self, body: dict[str, Any]) -> None:
        await self.ack(_int(body, "user_id"), _int(body, "device_id"), _int(body, "up_to"))


def check_message(kind: str, content: Any, config: ToDeviceConfig, *,
                  sealed: bool = False) -> None:
    """A message a signed-in sender may queue. `sealed` is reserved for sealed sends
    (POST /sealed/send, checked by the recipient's access key): taking it here would let
    anyone signed in skip that check and pass as a sealed sender."""
    if kind == SEALED_TYPE and not sealed:
        raise BadRequest(f"type: {SEALED_TYPE!r} is reserved for sealed sends "
                         "(POST /sealed/send)", code="reserved_type")
    if not kind or len(kind) > MAX_TYPE_LENGTH:
        raise BadRequest(f"type: 1 to {MAX_TYPE_LENGTH} characters", code="invalid_field")
    if not isinstance(content, dict):
        raise BadRequest("content: expected an object", code="invalid_field")
    try:
        size = len(records.pack(content))
    except UnstorableValue as exc:  # a number beyond 64 bits: the models refuse it first
        raise BadRequest(f"content: {exc}", code="unstorable_value") from None
    if size > config.max_message_bytes:
        raise BadRequest(f"content: at most {config.max_message_bytes} bytes per message "
                         "(to_device.max_message_bytes)", code="message_too_large")


# -- any shard: the client's side -------------------------------------------------------------


class ToDevice:
    """`POST /to_device` and `to_device_ack`, routed to each target's home."""

    def __init__(self, *, router: Router, home: ToDeviceHome, ratelimits: RateLimits,
                 config: ToDeviceConfig) -> None:
        self._router = router
        self._home = home
        self._ratelimits = ratelimits
        self._config = config

    async def send(self, session: Session, txn_id: str,
                   messages: Mapping[int, Mapping[int, tuple[str, Any]]],
                   address: str | None = None) -> int:
        """`messages`: user -> device (0: every device) -> (type, content). Rate limited
        by `to_device`, one per target device ("*" is charged once known)."""
        flat = [(user_id, device_id, kind, content)
                for user_id, by_device in messages.items()
                for device_id, (kind, content) in by_device.items()]
        if not flat:
            return 0
        if len(flat) > MAX_TARGETS:
            raise BadRequest(f"messages: at most {MAX_TARGETS} target devices in one request",
                             code="too_many_targets")
        for _, _, kind, content in flat:
            check_message(kind, content, self._config)
        named = float(len(flat))
        self._ratelimits.take("to_device", account=session.user_id, address=address,
                              cost=named)
        by_home: dict[str, list[list[Any]]] = {}
        for user_id, device_id, kind, content in flat:
            by_home.setdefault(self._router.home_of_user(user_id), []).append(
                [user_id, device_id, kind, content])
        queued = 0
        try:
            for home, items in sorted(by_home.items()):
                queued += int(await shard_calls.call(
                    self._router, self._home.requests, home, "home.to_device_put",
                    {"sender_user": session.user_id, "sender_device": session.device_id,
                     "txn_id": txn_id, "messages": items}))
        finally:
            # "*" reached every device of its user: those past the one taken are charged
            # now (it may go into debt, repaid at its rate).
            if queued > named:
                self._ratelimits.charge("to_device", account=session.user_id,
                                        address=address, cost=queued - named)
        return queued

    async def ack(self, session: Session, up_to: int) -> None:
        await shard_calls.call(self._router, self._home.requests,
                               self._router.home_of_user(session.user_id), "home.to_device_ack",
                               {"user_id": session.user_id, "device_id": session.device_id,
                                "up_to": up_to})

    async def fetch(self, user_id: int, device_id: int, after: int,
                    ) -> tuple[list[Entry], int, bool]:
        answer = await shard_calls.call(
            self._router, self._home.requests, self._router.home_of_user(user_id),
            "home.to_device_fetch", {"user_id": user_id, "device_id": device_id,
                                     "after": after, "limit": FETCH_LIMIT})
        raw_entries, head, more = answer
        return [Entry.from_wire(item) for item in raw_entries], int(head), bool(more)


# -- the shard holding the sockets: each session's feed ---------------------------------------


class _Feed:
    __slots__ = ("fetching", "held", "next", "session", "wanted")

    def __init__(self, session: LiveSession) -> None:
        self.session = session
        #: The next id this session owes its device (0: not started: everything is held).
        self.next = 0
        self.held: dict[int, Entry] = {}
        self.fetching = False
        #: A fetch is needed (a gap, or deliveries over a link that went down).
        self.wanted = False


class ToDeviceFeeds:
    """Per live session, the next to-device id it owes; entries offered live are
    delivered in order, each once, and a gap is filled from the home by `run`."""

    def __init__(self, *, hub: Hub, relay: ToDevice, router: Router,
                 max_queue: int) -> None:
        self._hub = hub
        self._relay = relay
        self._router = router
        self._max_queue = max_queue
        self._feeds: dict[LiveSession, _Feed] = {}
        self._wake_send, self._wake_receive = trio.open_memory_channel[None](1)

    # -- Delivery's handler (any shard) --------------------------------------------------------

    def deliver(self, data: Any, users: list[int]) -> None:
        """Delivery kind "to_device": [device, [entry, ...]] for the device's sessions here."""
        if not isinstance(data, list) or len(data) != 2 or not isinstance(data[1], list):
            raise ValueError("a to-device delivery is [device, entries]")
        device_id = data[0]
        entries = [item if isinstance(item, Entry) else Entry.from_wire(item)
                   for item in data[1]]
        for user_id in users:
            for session in self._hub.sessions_of(user_id):
                feed = self._feeds.get(session)
                if feed is not None and session.device_id == device_id:
                    self._offer(feed, entries)

    def _offer(self, feed: _Feed, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if entry.id >= feed.next:
                feed.held[entry.id] = entry
        if feed.next and not feed.fetching:
            self._release(feed)

    def _release(self, feed: _Feed) -> None:
        """Push the held entries that are next in line; a gap asks for a fetch."""
        for to_device_id in sorted(feed.held):
            if to_device_id < feed.next:
                del feed.held[to_device_id]
            elif to_device_id == feed.next:
                feed.session.push(feed.held.pop(to_device_id).frame())
                feed.next += 1
            else:
                self._want(feed)
                return

    def _want(self, feed: _Feed) -> None:
        feed.wanted = True
        with contextlib.suppress(trio.WouldBlock):  # a wake-up is pending already
            self._wake_send.send_nowait(None)

    # -- the web layer ---------------------------------------------------------------------------

    async def start(self, session: LiveSession) -> None:
        """Everything still queued for the session's device, then live. Called once the
        session is attached: what lands meanwhile is held and sent once, in order."""
        feed = _Feed(session)
        self._feeds[session] = feed
        feed.fetching = True
        try:
            await self._catch_up(feed, after=0)
        except ChatdError:
            # The home stopped answering (a partition): the socket stays, as it does for
            # messages; everything stays held until `run` fetches it, which the home's
            # link coming back up asks for (`peer_up`).
            feed.wanted = True
            return
        finally:
            feed.fetching = False
        self._release(feed)

    def stop(self, session: LiveSession) -> None:
        self._feeds.pop(session, None)

    async def _catch_up(self, feed: _Feed, after: int) -> None:
        session = feed.session
        while not session.closed:
            entries, head, more = await self._relay.fetch(session.user_id,
                                                          session.device_id, after)
            for entry in entries:
                if entry.id >= max(feed.next, after + 1):
                    session.push(entry.frame())
                    feed.next = entry.id + 1
            if not more or not entries:
                feed.next = max(feed.next, head + 1)
                return
            after = entries[-1].id
            # Back-pressure: the socket's queue is bounded (websocket.max_queue).
            # (Polled: a LiveSession is sans-I/O and signals only its transport.)
            while session.queued > self._max_queue // 2 and not session.closed:  # noqa: ASYNC110
                await trio.sleep(0.02)

    def peer_up(self, peer: str, _boot_id: str = "") -> None:
        """A link came back: deliveries from the homes behind it may have been lost."""
        for session, feed in self._feeds.items():
            if self._router.home_of_user(session.user_id) == peer:
                self._want(feed)

    async def run(self) -> None:
        """Fill gaps: fetch from the home for the sessions that want it."""
        async for _ in self._wake_receive:
            for feed in [feed for feed in self._feeds.values() if feed.wanted]:
                if feed.fetching or feed.session.closed:
                    continue
                feed.wanted = False
                feed.fetching = True
                try:
                    await self._catch_up(feed, after=max(0, feed.next - 1))
                except ChatdError:
                    feed.wanted = True  # the home is unreachable: its link coming up asks again
                except (ValueError, TypeError) as exc:
                    log.warning("a to-device fetch was malformed: %s", exc)
                finally:
                    feed.fetching = False
                self._release(feed)
