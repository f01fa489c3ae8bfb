"""Availability after an owner dies: how long until its conversations take sends again.

`time_to_writable` kills (SIGKILL) the shard acting as owner of a conversation and
poll-sends to that conversation through the live shards, as a sender homed elsewhere,
until one send is acknowledged; the time from the kill to that acknowledgement is the
conversation's unavailability. With replication factor 1 nothing else can take the
writes: the shard is restarted after `restart_after` seconds and the figure is the
restart (and redial) time. With replication the shard stays down past the failover
bound, and the figure is the failover time, which the design bounds by
`failover_after` + 2 s.

`measure_availability` repeats it over several kills (a different owner each time where
the seed allows) and returns the distribution.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

import trio

from chatd.client import ApiError
from tests.cluster.harness import NAMES, Person, home_of_user
from tests.cluster.proxied import Placement, ProxiedCluster, peers_of
from tests.cluster.workload import CONNECTION_ERRORS, Scene

#: Each poll waits at most this long for its answer (a shard may hang meanwhile).
POLL_TIMEOUT = 1.0
#: The gap between polls: the resolution of the figure.
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class Outage:
    victim: str
    conversation_id: str
    seconds: float
    polls: int


@dataclass(frozen=True)
class Availability:
    outages: tuple[Outage, ...]

    @property
    def seconds(self) -> list[float]:
        return [outage.seconds for outage in self.outages]

    def describe(self) -> str:
        figures = sorted(self.seconds)
        return (f"{len(figures)} kills: min {figures[0]:.2f} s, median "
                f"{statistics.median(figures):.2f} s, max {figures[-1]:.2f} s "
                f"({', '.join(f'{o.victim}: {o.seconds:.2f}' for o in self.outages)})")


async def time_to_writable(cluster: ProxiedCluster, *, victim: str, conversation_id: str,
                           sender: Person, restart_after: float | None,
                           within: float = 60.0) -> Outage:
    """Kill `victim`; the seconds until `sender` (homed elsewhere) can send to
    `conversation_id` through a live shard. `restart_after`: start the victim again
    that long after the kill (None: leave it down). Fails after `within` seconds."""
    assert home_of_user(sender.user_id) != victim, "the sender's home must stay up"
    vias = list(peers_of(victim))
    clients = [await cluster.client(via, sender, request_timeout=POLL_TIMEOUT) for via in vias]
    client_msg_id = f"avail-{victim}-{trio.current_time():.3f}"
    polls = 0
    killed_at = trio.current_time()
    cluster.kill(victim)
    async with trio.open_nursery() as nursery:
        if restart_after is not None:
            async def restart() -> None:
                await trio.sleep(restart_after)
                await cluster.restart(victim)
            nursery.start_soon(restart)
        with trio.fail_after(within):
            while True:
                client = clients[polls % len(clients)]
                polls += 1
                try:
                    # One client_msg_id throughout: the polls leave one message behind.
                    await client.send(conversation_id, "are you there?",
                                      client_msg_id=client_msg_id)
                    break
                except (ApiError, *CONNECTION_ERRORS):
                    await trio.sleep(POLL_INTERVAL)
        seconds = trio.current_time() - killed_at
    return Outage(victim, conversation_id, seconds, polls)


async def measure_availability(cluster: ProxiedCluster, scene: Scene, rng: random.Random, *,
                               kills: int, restart_after: float | None,
                               placement: Placement, within: float = 60.0) -> Availability:
    """`kills` outages (`time_to_writable`), each of a random range's conversations,
    killing the range's acting owner (`placement`; its natural owner while shards
    report none), waiting for the whole cluster to be linked again between them."""
    outages = []
    for _ in range(kills):
        range_name = rng.choice(NAMES)
        victim = (await placement(range_name) or (range_name, ""))[0]
        candidates = [(conversation_id, person)
                      for conversation_id in scene.owned_by(range_name)
                      for person in scene.members[conversation_id]
                      if home_of_user(person.user_id) != victim]
        assert candidates, f"no conversation of range {range_name} with a member not " \
            f"homed at {victim}"
        conversation_id, sender = rng.choice(candidates)
        outages.append(await time_to_writable(cluster, victim=victim,
                                              conversation_id=conversation_id,
                                              sender=sender, restart_after=restart_after,
                                              within=within))
        if not cluster[victim].running:
            await cluster.restart(victim)
        await cluster.wait_ready()
    return Availability(tuple(outages))
