"""Shards dying, partitions, and a shard on the wrong ring: what clients see, and that
nothing acknowledged is lost."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio

from chatd.client import ApiError, LiveConnection
from chatd.domain.ring import HashRing
from tests.cluster.harness import (
    NAMES,
    NUMBERS,
    Cluster,
    Person,
    Shard,
    history,
    logged,
    messages,
    nothing_more,
    owner_of,
    owner_of_direct,
    write_config,
)
from tests.helpers import free_port

#: What "fails fast" means for a client of a shard whose peer is gone: well within the
#: 3 s a client would wait, and no later than the mesh's request deadline (2 s).
FAIL_FAST = 2.5


async def contact_in_chat_owned_by(cluster: Cluster, person: Person, owner: str, *,
                                   home: str) -> Person:
    """A new user homed at `home` whose direct chat with `person` is owned by `owner`."""
    for _ in range(40):
        other = await cluster.person(home=home)
        if owner_of_direct(person.user_id, other.user_id) == owner:
            return other
    raise AssertionError(f"no user homed at {home} whose chat is owned by {owner}")


async def timed_send_error(send: Any) -> tuple[ApiError, float]:
    """Run `send()`, which must fail; the error and how long it took."""
    started = trio.current_time()
    with pytest.raises(ApiError) as raised:
        await send()
    return raised.value, trio.current_time() - started


async def test_a_dead_owner_fails_sends_fast_and_loses_nothing_acknowledged(
        cluster: Cluster) -> None:
    """Alice (home a) writes to Bob in a chat owned by c, pipelining over a WebSocket on
    b, when c is killed (SIGKILL). Every send then fails fast with 503
    owner_unreachable, over REST and WebSocket, while a chat owned by b goes on. Once c
    is back, every acknowledged send is in the log at its seq, and retrying the failed
    ones with their client_msg_id makes no duplicate."""
    alice = await cluster.person(home="a")
    bob = await contact_in_chat_owned_by(cluster, alice, "c", home="b")
    carol = await contact_in_chat_owned_by(cluster, alice, "b", home="b")
    alice_a, alice_b = await cluster.client("a", alice), await cluster.client("b", alice)
    doomed = (await alice_a.open_direct(bob.user_id))["conversation_id"]
    alive = (await alice_a.open_direct(carol.user_id))["conversation_id"]
    assert (owner_of(doomed), owner_of(alive)) == ("c", "b")

    acked: dict[str, int] = {}
    failed: dict[str, str] = {}
    enough = trio.Event()

    async def write(live: LiveConnection, writer: int) -> None:
        for n in range(10_000):
            client_msg_id = f"w{writer}-{n}"
            try:
                sent = await live.send(doomed, client_msg_id, client_msg_id=client_msg_id)
            except ApiError as exc:
                failed[client_msg_id] = exc.code
                return
            acked[client_msg_id] = sent["seq"]
            if len(acked) >= 40:
                enough.set()

    async with alice_b.connect() as live:
        async with trio.open_nursery() as nursery:
            for writer in range(8):  # eight sends in flight at a time
                nursery.start_soon(write, live, writer)
            with trio.fail_after(30):
                await enough.wait()
            cluster["c"].kill()
        assert len(failed) == 8 and set(failed.values()) == {"owner_unreachable"}, failed

        # REST through a and b, and the WebSocket on b: 503 owner_unreachable, fast.
        for client in (alice_a, alice_b):
            error, took = await timed_send_error(
                lambda client=client: client.send(doomed, "after the kill"))
            assert (error.status, error.code) == (503, "owner_unreachable"), error
            assert took < FAIL_FAST, took
        error, took = await timed_send_error(lambda: live.send(doomed, "over ws"))
        assert error.code == "owner_unreachable" and took < FAIL_FAST, (error, took)

        # A conversation owned by a live shard does not notice.
        async with (await cluster.client("a", carol)).connect() as carol_live:
            sent = await live.send(alive, "still here")
            [got] = await messages(carol_live, 1)
            assert (got["seq"], got["body"]) == (sent["seq"], "still here")
            assert (await alice_b.send(alive, "and over rest"))["seq"] == sent["seq"] + 1

    await cluster.restart("c")
    log = await history(alice_b, doomed)
    seq_of = {m["client_msg_id"]: m["seq"] for m in log}
    for client_msg_id, seq in acked.items():
        assert seq_of.get(client_msg_id) == seq, client_msg_id
    # The failed sends may or may not have been written before c died: retried with the
    # same client_msg_id, each is in the log once either way.
    for client_msg_id in failed:
        retried = await alice_b.send(doomed, client_msg_id, client_msg_id=client_msg_id)
        assert seq_of.get(client_msg_id, retried["seq"]) == retried["seq"]
    some_acked = next(iter(acked))
    assert (await alice_a.send(doomed, "again", client_msg_id=some_acked))["seq"] == \
        acked[some_acked]
    log = await history(alice_a, doomed)
    assert [m["seq"] for m in log] == list(range(1, len(log) + 1))
    ids = [m["client_msg_id"] for m in log]
    assert sorted(ids) == sorted({*acked, *failed}), "a duplicate or a lost send"


async def test_a_partition_heals_and_live_sessions_catch_up_by_themselves(
        cluster: Cluster) -> None:
    """c is cut off from a and b (the proxy closes both links). Alice keeps writing to a
    group owned by a. Carol (home b) and Dave (home a), connected to c, see nothing
    and cannot write to it; neither can Erin (home c, connected to b), whose home is
    across the partition. When it heals, their open sessions get everything they
    missed, in order, without any new message; Carol's retried send goes through."""
    alice, carol, dave, erin = await cluster.people(["a", "b", "a", "c"])
    alice_a = await cluster.client("a", alice)
    for _ in range(40):
        group = (await alice_a.create_group(
            "g", [carol.user_id, dave.user_id, erin.user_id]))["conversation_id"]
        if owner_of(group) == "a":
            break
    else:
        raise AssertionError("no group owned by a")

    async with (await cluster.client("c", carol)).connect() as carol_live, \
            (await cluster.client("c", dave)).connect() as dave_live, \
            (await cluster.client("b", erin)).connect() as erin_live:
        readers = (carol_live, dave_live, erin_live)
        await alice_a.send(group, "before")
        for live in readers:
            got = await messages(live, 2, conversation=group)
            assert [m["seq"] for m in got] == [1, 2]

        await cluster.proxy.stop()
        await cluster.wait_links({"a": {"b": True, "c": False}, "b": {"a": True, "c": False},
                                  "c": {"a": False, "b": False}})
        for n in range(5):
            assert (await alice_a.send(group, f"during {n}"))["seq"] == 3 + n
        with pytest.raises(ApiError) as raised:
            await carol_live.send(group, "from the far side", client_msg_id="far")
        assert raised.value.code == "owner_unreachable"
        await nothing_more(carol_live, wait=0.3, conversation=group)
        await nothing_more(erin_live, wait=0.1, conversation=group)

        await cluster.proxy.start()
        for live in readers:
            got = await messages(live, 5, within=20, conversation=group)
            assert [(m["seq"], m["body"]) for m in got] == [
                (3 + n, f"during {n}") for n in range(5)]
        sent = await carol_live.send(group, "from the far side", client_msg_id="far")
        assert sent["seq"] == 8
        for live in (dave_live, erin_live):
            [far] = await messages(live, 1, conversation=group)
            assert (far["seq"], far["sender_id"]) == (8, carol.user_id)
        for live in readers:
            await nothing_more(live, wait=0.2, conversation=group)


async def test_a_shard_on_another_ring_is_refused_and_its_data_will_not_reshard(
        cluster: Cluster) -> None:
    """c's data directory started under a four-shard ring exits 2 pointing to
    Resharding. A fresh shard named c on that ring, at c's address, is refused by a and
    b (both log the two signatures) and sees no peer up; the real c comes back and
    the cluster works again."""
    real_c = cluster["c"]
    real_c.kill()
    await cluster.wait_links({"a": {"c": False}, "b": {"c": False}})
    four = HashRing([*NAMES, "d"])
    other_ring = write_config(cluster.root / "four.toml",
                              {**cluster.mesh_ports, "d": free_port()},
                              numbers={**NUMBERS, "d": 3})

    real_c.start(config=other_ring)
    assert await real_c.exit_status() == 2
    refusal = real_c.run_log()
    assert "Resharding" in refusal and "another ring" in refusal, refusal

    stranger = Shard("c", config=other_ring, data_dir=cluster.root / "data-c-four",
                     log_path=cluster.root / "c-four.log", client_port=free_port(),
                     mesh_port=real_c.mesh_port)
    stranger.start()
    try:
        await stranger.serving()
        ours, theirs = HashRing(NAMES).signature(), four.signature()
        for name in ("a", "b"):
            await logged(cluster[name], f"peer c: ring signature {theirs} != ours {ours}")
        for name in ("a", "b"):
            await logged(stranger, f"peer {name}: ring signature {ours} != ours {theirs}")
        for _ in range(5):  # refused every time it is dialed, not up in between
            assert await stranger.peers_up() == {"a": False, "b": False, "d": False}
            assert (await cluster["a"].peers_up())["c"] is False
            await trio.sleep(0.2)
    finally:
        stranger.kill()

    real_c.start()
    await cluster.wait_ready()
    alice = await cluster.person(home="a")
    bob = await contact_in_chat_owned_by(cluster, alice, "c", home="b")
    alice_b = await cluster.client("b", alice)
    conversation = (await alice_b.open_direct(bob.user_id))["conversation_id"]
    assert (await alice_b.send(conversation, "c is back"))["seq"] == 1


async def test_a_stalled_owner_times_out_within_the_deadline(cluster: Cluster) -> None:
    """c stops (SIGSTOP): its links stay open, it answers nothing. Sends to what it owns
    fail with 503 owner_unreachable within the request deadline (2 s) rather than hang;
    once the heartbeat gives up on it, at once. After SIGCONT everything works again."""
    alice = await cluster.person(home="a")
    bob = await contact_in_chat_owned_by(cluster, alice, "c", home="b")
    alice_a = await cluster.client("a", alice)
    conversation = (await alice_a.open_direct(bob.user_id))["conversation_id"]
    process = cluster["c"].process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        error, took = await timed_send_error(lambda: alice_a.send(conversation, "hello?"))
        assert (error.status, error.code) == (503, "owner_unreachable"), error
        # By the request deadline (2 s; the heartbeat gives up after 3): not a hang.
        assert 1.5 < took < FAIL_FAST + 0.5, took
        await cluster.wait_links({"a": {"c": False}, "b": {"c": False}}, within=10)
        error, took = await timed_send_error(lambda: alice_a.send(conversation, "there?"))
        assert error.code == "owner_unreachable" and took < 0.5, (error, took)
    finally:
        process.send_signal(signal.SIGCONT)
    await cluster.wait_ready()
    sent = await alice_a.send(conversation, "back")
    log = await history(alice_a, conversation)
    assert [m["body"] for m in log][-1] == "back" and log[-1]["seq"] == sent["seq"]
    assert [m["seq"] for m in log] == list(range(1, len(log) + 1))

