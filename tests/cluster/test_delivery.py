"""One log per conversation, whichever shard a client uses: history, live fan-out and
catch-up across shards (owner -> recipient's home -> the shard holding the socket)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from chatd.client import ApiError, ChatClient
from tests.cluster.harness import (
    NAMES,
    Cluster,
    Person,
    history,
    messages,
    next_of,
    nothing_more,
    owner_of,
    owner_of_direct,
)

FIELDS = ("seq", "message_id", "sender_id", "client_msg_id", "body")


def view(message: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(message[key] for key in FIELDS)


async def groups_owned_by_each_shard(cluster: Cluster, creator: Person,
                                     others: list[Person]) -> dict[str, str]:
    """Create groups (through every shard in turn) until each shard owns one: a group's
    id is minted by the shard that creates it, and the ring places it."""
    owned: dict[str, str] = {}
    for attempt in range(60):
        client = await cluster.client(NAMES[attempt % 3], creator)
        group = await client.create_group(f"g{attempt}", [p.user_id for p in others])
        owned.setdefault(owner_of(group["conversation_id"]), group["conversation_id"])
        if len(owned) == len(NAMES):
            return owned
    raise AssertionError(f"60 groups and still not one owned by each shard: {owned}")


async def test_every_shard_serves_the_same_dense_log(cluster: Cluster) -> None:
    """Members homed on a, b and c send through every shard at once into groups owned by
    each shard; every member reads the same log, seq 1..n, from every shard."""
    members = await cluster.people(NAMES)
    groups = await groups_owned_by_each_shard(cluster, members[0], members[1:])
    per_writer = 4
    answers: dict[str, dict[str, int]] = {group: {} for group in groups.values()}

    async def write(group: str, person: Person, shard: str) -> None:
        client = await cluster.client(shard, person)
        for n in range(per_writer):
            client_msg_id = f"{person.handle}-{shard}-{n}"
            # 36 writers at once on a loaded box can outlast a home's 2 s request
            # deadline (503): the client retries with the same id, as clients must, and
            # the retry may not write twice.
            with trio.fail_after(30):
                while True:
                    try:
                        sent = await client.send(group, client_msg_id,
                                                 client_msg_id=client_msg_id)
                        break
                    except ApiError as exc:
                        if exc.status != 503:
                            raise
                        await trio.sleep(0.1)
            answers[group][client_msg_id] = sent["seq"]

    async with trio.open_nursery() as nursery:
        for group in groups.values():
            for person in members:
                for shard in NAMES:
                    nursery.start_soon(write, group, person, shard)

    size = 1 + len(members) * len(NAMES) * per_writer
    for owner, group in groups.items():
        views = {}
        for person in members:
            for shard in NAMES:
                log = await history(await cluster.client(shard, person), group)
                views[person.handle, shard] = [view(message) for message in log]
        reference = views[members[0].handle, "a"]
        assert [entry[0] for entry in reference] == list(range(1, size + 1)), owner
        for key, seen in views.items():
            assert seen == reference, (owner, key)
        # Every acknowledged send is in the log once, at the seq it was answered with,
        # and each writer's sends keep the order they were made in.
        seq_of = {entry[3]: entry[0] for entry in reference if entry[3]}
        assert seq_of == answers[group]
        for person in members:
            for shard in NAMES:
                ids = [f"{person.handle}-{shard}-{n}" for n in range(per_writer)]
                assert sorted(ids, key=seq_of.__getitem__) == ids


async def alice_and_bob_in_a_chat_owned_by_a(cluster: Cluster) -> tuple[Person, Person]:
    """Alice homed on a, Bob on b, their direct chat owned by a (its id comes from the
    pair: registering Alices until one fits takes 3 tries on average)."""
    bob = await cluster.person(home="b")
    for _ in range(30):
        alice = await cluster.person(home="a")
        if owner_of_direct(alice.user_id, bob.user_id) == "a":
            return alice, bob
    raise AssertionError("no alice whose chat with bob is owned by a")


async def test_direct_chat_across_homes_through_a_third_shard(cluster: Cluster) -> None:
    """Alice (home a) and Bob (home b), both connected to c, in a chat owned by a: sends
    go c -> a, deliveries a -> b -> c. Live; then, after a reconnect, what Bob's device
    never acknowledged comes again and what was sent while he was away follows, in seq
    order with no gap and no duplicate; then live again."""
    alice, bob = await alice_and_bob_in_a_chat_owned_by_a(cluster)
    alice_c, bob_c = await cluster.client("c", alice), await cluster.client("c", bob)
    conversation = (await alice_c.open_direct(bob.user_id))["conversation_id"]
    assert owner_of(conversation) == "a"

    async with alice_c.connect() as a_live, bob_c.connect() as b_live:
        for n in range(5):
            sent = await a_live.send(conversation, f"live {n}")
            assert sent["seq"] == n + 1
        got = await messages(b_live, 5)
        assert [(m["seq"], m["body"], m["sender_id"]) for m in got] == [
            (n + 1, f"live {n}", alice.user_id) for n in range(5)]
        await nothing_more(a_live, wait=0.2)  # the sending device has its `sent` answers

    async with alice_c.connect() as a_live:
        for n in range(20):
            await a_live.send(conversation, f"offline {n}")

    expected = [(n + 1, f"live {n}") for n in range(5)] + [
        (6 + n, f"offline {n}") for n in range(20)]
    async with bob_c.connect() as b_live:
        got = await messages(b_live, 25)
        assert [(m["seq"], m["body"]) for m in got] == expected
        await nothing_more(b_live)
        await (await cluster.client("b", alice)).send(conversation, "after")
        [after] = await messages(b_live, 1)
        assert (after["seq"], after["body"]) == (26, "after")
        await nothing_more(b_live, wait=0.3)


async def test_a_reconnect_after_an_ack_resumes_after_it(cluster: Cluster) -> None:
    """Bob acknowledges what he got, goes away, comes back through c: he gets exactly
    what was sent meanwhile, and the shards' links stay up."""
    alice, bob = await alice_and_bob_in_a_chat_owned_by_a(cluster)
    alice_c, bob_c = await cluster.client("c", alice), await cluster.client("c", bob)
    conversation = (await alice_c.open_direct(bob.user_id))["conversation_id"]
    async with bob_c.connect() as b_live:
        for n in range(5):
            await alice_c.send(conversation, f"live {n}")
        got = await messages(b_live, 5, within=5)
        await b_live.ack(conversation, got[-1]["seq"])
    for n in range(20):
        await alice_c.send(conversation, f"offline {n}")
    async with bob_c.connect() as b_live:
        got = await messages(b_live, 20, within=5)
        assert [(m["seq"], m["body"]) for m in got] == [
            (6 + n, f"offline {n}") for n in range(20)]
        await nothing_more(b_live)
    for name in NAMES:  # no link went down on the way
        assert " is down" not in cluster[name].log(), cluster[name].log()


#: Where each of the six members (homed on a, a, b, b, c, c) connects.
LAYOUTS = {
    # Every member on a shard other than its home: deliveries go owner -> home -> there.
    "away_from_home": ["b", "c", "c", "a", "a", "b"],
    # Half of them on their home shard: deliveries go owner -> home, handed over there.
    "half_at_home": ["a", "c", "b", "a", "c", "b"],
}


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_group_across_all_homes_and_shards_everyone_gets_everything(
        cluster: Cluster, layout: str) -> None:
    """Six members, two homed on each shard, connected as `layout` says (the first
    also on a second device, on c), all sending at once: every device gets every
    message in seq order, once; each sender's own arrive as `sent` answers."""
    members = await cluster.people(["a", "a", "b", "b", "c", "c"])
    admin = await cluster.client("a", members[0])
    group = (await admin.create_group("all", [p.user_id for p in members[1:]]))[
        "conversation_id"]
    second = await cluster.login(members[0].handle, via="a", device="tablet")
    per_sender = 12
    total = 1 + len(members) * per_sender
    views: dict[str, list[tuple[Any, ...]]] = {}
    ready = trio.Event()
    connected = 0

    async def member(index: int, person: Person, shard: str) -> None:
        nonlocal connected
        client = await cluster.client(shard, person)
        async with client.connect() as live:
            first = await next_of(live, "message")  # the group's creation, caught up
            assert first["message"]["seq"] == 1
            connected += 1
            if connected == len(members):
                ready.set()
            await ready.wait()
            own = []
            for n in range(per_sender):
                body = f"{person.handle}:{n}"
                sent = await live.send(group, body, client_msg_id=f"m{index}-{n}")
                own.append((sent["seq"], sent["message_id"], person.user_id,
                            f"m{index}-{n}", body))
            others = await messages(live, total - 1 - per_sender, within=15)
            await nothing_more(live, wait=0.3)
        arrived = [view(m) for m in others]
        # Arrival order is seq order: no gap is ever filled late, nothing repeats.
        assert [entry[0] for entry in arrived] == sorted({entry[0] for entry in arrived})
        views[person.handle] = sorted([view(first["message"]), *arrived, *own])

    async def watcher(client: ChatClient) -> None:
        # Logged in after the group was made: its log starts after that (api.md).
        async with client.connect() as live:
            got = await messages(live, total - 1, within=15)
            await nothing_more(live, wait=0.3)
        views["tablet"] = [view(m) for m in got]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher, await cluster.client("c", second))
        for index, (person, shard) in enumerate(
                zip(members, LAYOUTS[layout], strict=True)):
            nursery.start_soon(member, index, person, shard)

    reference = views[members[0].handle]
    assert [entry[0] for entry in reference] == list(range(1, total + 1)), owner_of(group)
    assert views.pop("tablet") == reference[1:]  # in arrival order: seq order
    for handle, seen in views.items():
        assert seen == reference, handle
    for index, person in enumerate(members):
        own = [entry[3] for entry in reference if entry[2] == person.user_id and entry[3]]
        assert own == [f"m{index}-{n}" for n in range(per_sender)]
