"""The Jepsen-style checker: clients write and read while a seeded nemesis kills, stalls
and partitions shards (and etcd); afterwards nothing acknowledged may be lost, doubled or
moved, and no client may ever have seen two messages at one seq.

A run is chosen by its seed (`--checker-seed` / CHATD_CHECKER_SEED; default a random
one, printed) and lasts CHATD_CHECKER_SECONDS of faults (short in CI; e.g. 600 for the
long run: the same test). Replay a failure with its seed:

    CHATD_CHECKER_SEED=1234 CHATD_CHECKER_SECONDS=25 pytest tests/cluster/test_checker.py -s

The cluster's settings come from tests/cluster/conftest.py (`checker_replication`,
`checker_etcd`): today replication factor 1 and no etcd, where a kill makes a shard's
conversations unavailable until it is back but must still lose nothing acknowledged.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
import trio

from chatd.client import ApiError
from tests.cluster.availability import measure_availability
from tests.cluster.harness import NAMES, eventually
from tests.cluster.history import History, RangeReport, check
from tests.cluster.nemesis import Nemesis
from tests.cluster.proxied import ProxiedCluster, RangeView
from tests.cluster.workload import CONNECTION_ERRORS, Scene, Workload, read_log, set_scene

pytestmark = [
    pytest.mark.slow,
    # A REST request cut short by a fault (a shard killed while the body is being sent)
    # leaves httpx's request-body generator unfinished, and Trio warns when it is
    # collected. It is the client library's, and harmless: the body is one bytes object.
    pytest.mark.filterwarnings(
        r"ignore:Async generator 'httpx\._content\.ByteStream\.__aiter__' was garbage "
        r"collected:ResourceWarning"),
]

SENDERS = 6
WEBSOCKET_SENDERS = 3
READERS = 2
WATCHERS = 3
#: After the faults are healed: how long the cluster gets before senders stop starting
#: new sends, and then how long the senders get to finish the ones they retry.
SETTLE = 2.0
DRAIN = 15.0
#: After the last send: how long the sockets still open get to receive it.
DELIVERY = 3.0


async def ranges_everywhere(cluster: ProxiedCluster) -> dict[str, list[RangeView]] | None:
    """Each shard's report of the ranges; None while shards have no such route."""
    views: dict[str, list[RangeView]] = {}
    for name in NAMES:
        ranges = await cluster.ranges(name)
        if ranges is None:
            return None
        views[name] = ranges
    return views


async def ranges_once_agreed(cluster: ProxiedCluster, *, within: float,
                             ) -> dict[str, list[RangeView]]:
    """The shards' reports once they agree, or the last ones after `within` seconds
    (for the check to say how they disagree)."""
    deadline = trio.current_time() + within
    while True:
        views = await ranges_everywhere(cluster)
        assert views is not None, "a shard stopped reporting ranges"
        if agree(views) or trio.current_time() > deadline:
            return views
        await trio.sleep(0.5)


def agree(views: dict[str, list[RangeView]]) -> bool:
    """Every shard names the same owner and epoch for every range."""
    seen = {frozenset((view.range, view.owner, view.epoch) for view in ranges)
            for ranges in views.values()}
    return len(seen) == 1


def epochs(views: dict[str, list[RangeView]] | None) -> dict[str, int]:
    """The highest epoch any shard reports for each range."""
    found: dict[str, int] = {}
    for ranges in (views or {}).values():
        for view in ranges:
            found[view.range] = max(found.get(view.range, 0), view.epoch)
    return found


async def read_everything(cluster: ProxiedCluster, scene: Scene, history: History) -> None:
    """Every conversation through every shard, as a member (retrying while the cluster
    recovers from the last fault)."""
    for conversation_id, members in sorted(scene.members.items()):
        for index, shard in enumerate(NAMES):
            member = members[index % len(members)]
            client = await cluster.client(shard, member)

            async def whole_log(client: Any = client,
                                conversation_id: str = conversation_id,
                                ) -> list[dict[str, Any]] | None:
                try:
                    return await read_log(client, conversation_id)
                except (ApiError, *CONNECTION_ERRORS):
                    return None

            log = await eventually(whole_log, within=30,
                                   what=f"a read of {conversation_id} through {shard}")
            history.read_finally(conversation_id, shard, log)


def fault_hold(replication: dict[str, Any] | None) -> tuple[float, float]:
    """How long faults are held: up to 5 s; with automatic failover, up to 5 s past
    `failover_after`, so that a cut or dead owner is sometimes failed over and sometimes
    back before it would be."""
    if replication is None or not replication.get("auto_failover"):
        return (1.0, 5.0)
    return (1.0, float(replication["failover_after"]) + 5.0)


async def test_nothing_acknowledged_is_lost_under_faults(
        proxied_cluster: ProxiedCluster, checker_seed: int, checker_seconds: float,
        checker_replication: dict[str, Any] | None) -> None:
    """Senders retrying with their client_msg_id, readers and live watchers, while the
    nemesis injects faults for `checker_seconds`; then every fault is healed and
    everything is read through every shard, and the history is checked
    (tests/cluster/history.py lists the rules)."""
    cluster, seed = proxied_cluster, checker_seed
    print(f"\nchecker: seed {seed}, {checker_seconds:g} s of faults")
    scene = await set_scene(cluster, random.Random(f"{seed}:scene"))
    history = History(shards=NAMES)
    first_ranges = await ranges_everywhere(cluster)
    workload = Workload(cluster, scene, history, seed=seed)
    nemesis = Nemesis(cluster, random.Random(f"{seed}:nemesis"),
                      placement=cluster.placement, hold=fault_hold(checker_replication))

    async with trio.open_nursery() as observers:
        for number in range(READERS):
            observers.start_soon(workload.reader, number)
        for number in range(WATCHERS):
            observers.start_soon(workload.watcher, number)
        async with trio.open_nursery() as senders:
            for number in range(SENDERS):
                senders.start_soon(workload.sender, number)
            for number in range(WEBSOCKET_SENDERS):
                senders.start_soon(workload.websocket_sender, number)
            with trio.move_on_after(checker_seconds):
                await nemesis.run()  # heals everything when cancelled
            await cluster.wait_ready()
            await trio.sleep(SETTLE)
            workload.winding_down.set()
            senders.cancel_scope.deadline = trio.current_time() + DRAIN
        await trio.sleep(DELIVERY)  # for the open sockets to get the last messages
        workload.over.set()
        observers.cancel_scope.cancel()

    await cluster.wait_ready()
    await read_everything(cluster, scene, history)
    last_ranges = None
    if first_ranges is not None:
        last_ranges = await ranges_once_agreed(cluster, within=30)
        history.ranges = [RangeReport(shard, view.range, view.owner, view.epoch)
                          for shard, ranges in last_ranges.items() for view in ranges]
    failovers = sum(epoch - epochs(first_ranges).get(range_name, 0)
                    for range_name, epoch in epochs(last_ranges).items())

    counts = {**history.counts(), **nemesis.summary(), "failovers": failovers}
    report = (f"seed {seed}: " + ", ".join(f"{key} {value}" for key, value in counts.items())
              + "\nunknown outcomes: " + ", ".join(
                  f"{reason} {count}" for reason, count in
                  history.unknown_outcomes.most_common(8))
              + "\nfaults:\n" + "\n".join(str(event) for event in sorted(
                  nemesis.events, key=lambda event: event.started)))
    print(report)
    violations = check(history)
    assert not violations, (
        f"{len(violations)} violation(s) with seed {seed} (replay: CHATD_CHECKER_SEED={seed}"
        f" CHATD_CHECKER_SECONDS={checker_seconds:g}):\n"
        + "\n".join(str(v) for v in violations[:20]) + f"\n{report}")
    # A run that acknowledged nothing, or injected nothing, checked nothing.
    assert counts["acks"] > 0 and sum(nemesis.counts.values()) > 0, report


async def test_conversations_take_sends_again_after_their_owner_dies(
        proxied_cluster: ProxiedCluster, checker_seed: int,
        checker_replication: dict[str, Any] | None) -> None:
    """The owner of some conversations is killed, several times: how long until a
    sender homed elsewhere can write to them again through a live shard. Without
    replication, that is the restart (the shard is started again at once); with
    automatic failover the shard stays down, and a replica must take over within
    failover_after + 2 s."""
    cluster, seed = proxied_cluster, checker_seed
    scene = await set_scene(cluster, random.Random(f"{seed}:scene"),
                            conversations_per_owner=2)
    failover_after: float | None = None
    if checker_replication is not None and checker_replication.get("auto_failover"):
        failover_after = float(checker_replication["failover_after"])
    availability = await measure_availability(
        cluster, scene, random.Random(f"{seed}:availability"),
        kills=int(os.environ.get("CHATD_CHECKER_KILLS", "3")),
        restart_after=0.0 if failover_after is None else failover_after + 4.0,
        placement=cluster.placement)
    print(f"\navailability (seed {seed}): {availability.describe()}")
    if failover_after is not None:
        # The failover's contract, not a speed: a replica takes over within the bound.
        assert all(seconds <= failover_after + 2.0 for seconds in availability.seconds), \
            availability.describe()
