"""The clients of a fault-injection run: senders that retry, readers, live watchers.

Everything they do and see goes into a `History` (tests/cluster/history.py). Each task
draws its choices from a `random.Random` of its own, seeded from the run's seed and its
name, so the sequence of choices a seed makes does not depend on how the tasks happen
to interleave.

- A **sender** picks a conversation and a member, and sends under a fresh
  client_msg_id through a random shard, retrying the same client_msg_id (backing off,
  through the next shard each time) until it is acknowledged or the run is over. Any
  503, timeout or lost connection means "unknown outcome": retry. Now and then it sends
  an acknowledged client_msg_id again, which must get the original answer.
- A **WebSocket sender** is one member sending over a live socket, retrying the same
  client_msg_id on a new socket to the next shard when the answer is an error that is
  not a refusal, or does not come; it records the message frames it gets meanwhile.
- A **reader** reads a whole conversation through a random shard now and then.
- A **watcher** holds a WebSocket on a shard as some member and records every message
  frame; it pings, and moves to another shard when its socket dies or stops answering.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from chatd.client import ApiError, ChatClient, LiveConnection
from chatd.protocol.handshake import HandshakeError
from chatd.wsclient import WebSocketClosed
from tests.cluster.harness import NAMES, Person, owner_of
from tests.cluster.history import Answer, History, Intent, LiveStream, is_refusal
from tests.cluster.proxied import ProxiedCluster

#: A request with no answer within this long counts as an unknown outcome (the shard
#: may be stopped); longer than the mesh's request deadline (2 s), so an owner that
#: hangs is answered 503 by the shard in between rather than timed out here.
REQUEST_TIMEOUT = 4.0
#: Errors of a connection or socket that mean "try again elsewhere".
CONNECTION_ERRORS = (httpx.TransportError, OSError, WebSocketClosed, HandshakeError,
                     trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel,
                     trio.TooSlowError)


@dataclass(frozen=True)
class Scene:
    """The people and the conversations of a run; `members` maps each conversation to
    the people in it."""

    people: tuple[Person, ...]
    members: dict[str, tuple[Person, ...]]

    def owned_by(self, shard: str) -> list[str]:
        return [c for c in self.members if owner_of(c) == shard]


async def set_scene(cluster: ProxiedCluster, rng: random.Random, *, people_per_home: int = 3,
                    conversations_per_owner: int = 4) -> Scene:
    """Register people homed on every shard, and direct chats and groups until every
    shard owns `conversations_per_owner` of each kind (the ring decides the owner)."""
    people = [await cluster.person(home=home)
              for home in NAMES for _ in range(people_per_home)]
    members: dict[str, tuple[Person, ...]] = {}
    directs = {name: 0 for name in NAMES}
    groups = {name: 0 for name in NAMES}
    pairs = [(one, other) for one, other in itertools.combinations(people, 2)]
    rng.shuffle(pairs)
    for one, other in pairs:
        client = await cluster.client_of(NAMES[len(members) % 3], one, request_timeout=30)
        conversation_id = (await client.open_direct(other.user_id))["conversation_id"]
        owner = owner_of(conversation_id)
        if directs[owner] < conversations_per_owner:
            directs[owner] += 1
            members[conversation_id] = (one, other)
        if min(directs.values()) >= conversations_per_owner:
            break
    for attempt in itertools.count():
        if min(groups.values()) >= conversations_per_owner:
            break
        assert attempt < 200, f"no group owned by each shard after 200 tries: {groups}"
        creator, *others = rng.sample(people, rng.randint(3, len(people)))
        client = await cluster.client_of(NAMES[attempt % 3], creator, request_timeout=30)
        group = await client.create_group(f"g{attempt}", [p.user_id for p in others])
        owner = owner_of(group["conversation_id"])
        if groups[owner] < conversations_per_owner:
            groups[owner] += 1
            members[group["conversation_id"]] = (creator, *others)
    assert min(directs.values()) >= conversations_per_owner, directs
    return Scene(tuple(people), members)


class Workload:
    """The client tasks of a run, recording into `history`."""

    def __init__(self, cluster: ProxiedCluster, scene: Scene, history: History, *,
                 seed: int) -> None:
        self.cluster = cluster
        self.scene = scene
        self.history = history
        self.seed = seed
        #: Set when senders should start no new send (they finish their retries).
        self.winding_down = trio.Event()
        #: Set when the run is over: sockets still open then were open to the end.
        self.over = trio.Event()
        self._conversations = sorted(scene.members)
        for conversation_id in self._conversations:
            history.conversations.add(conversation_id)

    def rng(self, task: str) -> random.Random:
        return random.Random(f"{self.seed}:{task}")

    async def _client(self, shard: str, person: Person) -> ChatClient:
        return await self.cluster.client_of(shard, person, request_timeout=REQUEST_TIMEOUT)

    # -- senders --------------------------------------------------------------------------

    async def sender(self, number: int) -> None:
        rng = self.rng(f"sender {number}")
        for n in itertools.count():
            if self.winding_down.is_set():
                return
            conversation_id = rng.choice(self._conversations)
            person = rng.choice(self.scene.members[conversation_id])
            client_msg_id = f"s{number}-{n}"
            intent = Intent(conversation_id, client_msg_id, person.user_id,
                            f"{client_msg_id} from {person.handle}")
            self.history.intend(intent)
            answer = await self._send_until_acknowledged(intent, person, rng)
            if answer is not None and rng.random() < 0.1:
                # The answer "got lost": the same send again must get the same answer.
                await trio.sleep(rng.uniform(0, 1.0))
                await self._send_until_acknowledged(intent, person, rng)
            await trio.sleep(rng.uniform(0, 0.1))

    async def _send_until_acknowledged(self, intent: Intent, person: Person,
                                       rng: random.Random) -> Answer | None:
        shards = list(NAMES)
        rng.shuffle(shards)
        for attempt in itertools.count():
            via = shards[attempt % len(shards)]
            self.history.attempted()
            try:
                client = await self._client(via, person)
                sent = await client.send(intent.conversation_id, intent.body,
                                         client_msg_id=intent.client_msg_id)
            except ApiError as error:
                if is_refusal(error.status, error.code):
                    self.history.refused(intent, error.status, error.code)
                    return None
                self.history.unknown(f"{error.status} {error.code}")
            except CONNECTION_ERRORS as error:
                self.history.unknown(type(error).__name__)
            else:
                answer = Answer(int(sent["seq"]), str(sent["message_id"]), via)
                self.history.acknowledged(intent, answer)
                return answer
            await trio.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)) * rng.uniform(0.5, 1.0))
        raise AssertionError("unreachable")  # pragma: no cover

    async def websocket_sender(self, number: int) -> None:
        rng = self.rng(f"websocket sender {number}")
        person = rng.choice(self.scene.people)
        conversations = [conversation_id for conversation_id in self._conversations
                         if person in self.scene.members[conversation_id]]
        shards = list(NAMES)
        rng.shuffle(shards)
        pending: Intent | None = None  # the send being retried, if any
        numbers = itertools.count()
        failures = 0
        for attempt in itertools.count():
            via = shards[attempt % len(shards)]
            try:
                async with (await self._client(via, person)).connect() as live, \
                        trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch, live, f"live {via}", person)
                    while True:
                        if pending is None:
                            if self.winding_down.is_set():
                                return
                            client_msg_id = f"w{number}-{next(numbers)}"
                            pending = Intent(rng.choice(conversations), client_msg_id,
                                             person.user_id,
                                             f"{client_msg_id} from {person.handle}")
                            self.history.intend(pending)
                        self.history.attempted()
                        with trio.fail_after(REQUEST_TIMEOUT):
                            sent = await live.send(pending.conversation_id, pending.body,
                                                   client_msg_id=pending.client_msg_id)
                        self.history.acknowledged(pending, Answer(
                            int(sent["seq"]), str(sent["message_id"]), f"ws {via}"))
                        pending = None
                        failures = 0
                        await trio.sleep(rng.uniform(0, 0.1))
            except* ApiError as group:
                for error in _leaves(group):
                    assert isinstance(error, ApiError)
                    if pending is not None and is_refusal(None, error.code):
                        self.history.refused(pending, error.status, error.code)
                        pending = None
                    else:
                        self.history.unknown(f"ws {error.code}")
            except* CONNECTION_ERRORS as group:
                for error in _leaves(group):
                    self.history.unknown(f"ws {type(error).__name__}")
            failures += 1
            await trio.sleep(min(1.0, 0.05 * 2 ** min(failures, 5)) * rng.uniform(0.5, 1.0))

    # -- readers --------------------------------------------------------------------------

    async def reader(self, number: int) -> None:
        rng = self.rng(f"reader {number}")
        while True:
            await trio.sleep(rng.uniform(0.2, 1.0))
            conversation_id = rng.choice(self._conversations)
            person = rng.choice(self.scene.members[conversation_id])
            via = rng.choice(NAMES)
            self.history.reads += 1

            def record(page: list[dict[str, Any]], source: str = f"read {via}") -> None:
                self.history.saw(page, source)

            with contextlib.suppress(ApiError, *CONNECTION_ERRORS):
                # Each page is recorded as it comes: what was seen was seen, even when a
                # fault cuts the read short.
                await read_log(await self._client(via, person), conversation_id, record)

    # -- watchers -------------------------------------------------------------------------

    async def watcher(self, number: int) -> None:
        rng = self.rng(f"watcher {number}")
        person = rng.choice(self.scene.people)
        while True:
            via = rng.choice(NAMES)
            try:
                client = await self._client(via, person)
                async with client.connect() as live, trio.open_nursery() as nursery:
                    nursery.start_soon(self._keep_alive, live, nursery.cancel_scope)
                    await self._watch(live, f"live {via}", person)
            except* (ApiError, *CONNECTION_ERRORS):
                pass
            await trio.sleep(rng.uniform(0.1, 0.5))

    async def _watch(self, live: LiveConnection, source: str, person: Person) -> None:
        """Record message frames, as sightings and as this socket's stream, acknowledging
        what arrived once a second (so a reconnect does not replay everything)."""
        stream = self.history.open_stream(source, person.user_id)
        try:
            await self._record(live, source, stream)
        except BaseException:
            if not self.over.is_set():
                stream.ended = True
            raise

    async def _record(self, live: LiveConnection, source: str, stream: LiveStream) -> None:
        latest: dict[str, int] = {}
        next_ack = trio.current_time() + 1.0
        while True:
            event = await live.next_event()
            if event["type"] == "message":
                message = event["message"]
                self.history.live_frames += 1
                self.history.saw([message], source)
                stream.received(message)
                conversation_id = str(message["conversation_id"])
                latest[conversation_id] = max(latest.get(conversation_id, 0),
                                              int(message["seq"]))
            if trio.current_time() >= next_ack and latest:
                for conversation_id, seq in latest.items():
                    await live.send_frame({"type": "ack", "conversation_id": conversation_id,
                                           "seq": seq})
                latest.clear()
                next_ack = trio.current_time() + 1.0

    async def _keep_alive(self, live: LiveConnection, scope: trio.CancelScope) -> None:
        """Ping every second; a socket that does not answer within the request timeout
        (its shard is stopped or cut off) is given up."""
        while True:
            await trio.sleep(1.0)
            with trio.move_on_after(REQUEST_TIMEOUT) as waited:
                await live.ping()
            if waited.cancelled_caught:
                scope.cancel()
                return


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions of a group, nested groups flattened."""
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found


async def read_log(client: ChatClient, conversation_id: str,
                   on_page: Callable[[list[dict[str, Any]]], None] | None = None,
                   ) -> list[dict[str, Any]]:
    """A conversation's whole log, paging forwards (200 a page); `on_page` is told of
    each page as it arrives."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await client.history(conversation_id, after=after, limit=200)
        messages: list[dict[str, Any]] = page["messages"]
        if on_page is not None:
            on_page(messages)
        found.extend(messages)
        if not page["has_more"] or not messages:
            return found
        after = int(messages[-1]["seq"])
