"""Replies, mentions and forwarding when the owners, the homes, the media's shard and the
clients' shards all differ: the Send command's new fields and the messages' quotes cross
the mesh, mentioned handles are looked up at their homes, and a forward reads its source
at one owner and writes its copies at others."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from chatd.client import ApiError
from chatd.domain.rules import DELETED_CONTENT_TYPE
from tests.cluster.harness import (
    Cluster,
    eventually,
    group_owned_by,
    history,
    messages,
    open_cluster,
)
from tests.cluster.test_replication import REPLICATED, admin, send_until_acked

T = TypeVar("T")


async def test_replies_mentions_and_forwards_across_shards(cluster: Cluster) -> None:
    alice = await cluster.person(home="a")
    bob = await cluster.person(home="b")
    carol = await cluster.person(home="c")
    alice_c = await cluster.client("c", alice)
    alice_b = await cluster.client("b", alice)
    bob_a = await cluster.client("a", bob)
    carol_a = await cluster.client("a", carol)
    carol_b = await cluster.client("b", carol)
    # Owned by b, used through c and a; the forward's target is owned by c.
    talk = await group_owned_by(alice_c, "b", name="talk", members=[bob.user_id, carol.user_id])
    elsewhere = await group_owned_by(alice_c, "c", name="elsewhere", members=[carol.user_id])
    not_hers = await group_owned_by(bob_a, "a", name="bob's", members=[])

    target = (await alice_c.send(talk, "x" * 120))["seq"]
    async with carol_a.connect() as live:
        # Bob (connected to a) mentions carol, whose handle lives at c.
        reply = await bob_a.send(talk, f"@{carol.handle} see above", reply_to=target)
        [frame] = [message for message in await messages(live, 3, conversation=talk)
                   if message["seq"] == reply["seq"]]
    quote = {"sender_id": alice.user_id, "content_type": "text/plain", "text": "x" * 100}
    assert (frame["reply_to"], frame["quote"], frame["mentions"]) == (
        target, quote, [carol.user_id])
    [stored] = [m for m in await history(alice_c, talk) if m["seq"] == reply["seq"]]
    assert (stored["reply_to"], stored["quote"], stored["mentions"]) == (
        target, quote, [carol.user_id])

    # A reply the owner refuses, refused across the mesh.
    try:
        await bob_a.send(talk, "re", reply_to=reply["seq"] + 10)
        raise AssertionError("a reply to a seq that does not exist was taken")
    except ApiError as exc:
        assert (exc.status, exc.code) == (404, "unknown_message")

    # Forward bob's message with media uploaded on a, through b, into c's group.
    uploaded = await bob_a.upload(b"minutes of the meeting", "text/plain")
    with_media = await bob_a.send(talk, "the minutes", attachments=[uploaded["media_id"]])
    results = await alice_b.forward(talk, with_media["seq"], [elsewhere, not_hers])
    assert results[1]["error"]["code"] == "unknown_conversation"
    [copy] = [m for m in await history(carol_b, elsewhere) if m["seq"] == results[0]["seq"]]
    assert copy["forwarded"] is True and copy["body"] == "the minutes"
    assert copy["attachments"][0]["media_id"] == uploaded["media_id"]
    assert await carol_b.media_bytes(uploaded["media_id"]) == b"minutes of the meeting"
    try:  # the source read at b refuses someone who is not in it
        await carol_b.forward(not_hers, 1, [elsewhere])
        raise AssertionError("carol forwarded from a group she is not in")
    except ApiError as exc:
        assert exc.status == 404

    # The target deleted through c: the quote read through a says so.
    await alice_c.request("POST", f"/messages/{talk}/{target}/delete", {"for": "everyone"})
    [stored] = [m for m in await history(carol_a, talk) if m["seq"] == reply["seq"]]
    assert stored["quote"] == {"sender_id": alice.user_id,
                               "content_type": DELETED_CONTENT_TYPE, "deleted": True}


@pytest.fixture
async def replicated(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path, nursery, replication=REPLICATED) as running:
        yield running


async def retrying(call: Callable[[], Awaitable[T]], *, within: float = 20.0) -> T:
    """`call()` again while it answers 503 (a range moving between shards)."""
    with trio.fail_after(within):
        while True:
            try:
                return await call()
            except ApiError as exc:
                assert exc.status == 503, exc
                await trio.sleep(0.2)


async def test_replies_mentions_and_forwards_survive_a_failover(replicated: Cluster) -> None:
    """What a reply, a mention and a forward stored at owner a is on its replica b: once b
    is promoted it shows them, checks new replies against the log it took over, and
    forwards from it."""
    cluster = replicated
    alice, bob = await cluster.people(["b", "c"])
    alice_b = await cluster.client("b", alice)
    bob_c = await cluster.client("c", bob)
    group = await group_owned_by(alice_b, "a", name="replicated", members=[bob.user_id])
    other = await group_owned_by(alice_b, "c", name="other", members=[bob.user_id])
    first = await send_until_acked(alice_b, group, "first_words")
    reply = await retrying(lambda: bob_c.send(group, f"@{alice.handle} indeed",
                                              reply_to=first["seq"], client_msg_id="reply"))
    [copy] = await retrying(lambda: alice_b.forward(group, reply["seq"], [other]))

    cluster["a"].kill()

    async def promoted() -> bool:
        response = await admin(cluster, "b", "POST", "/admin/promote", {"range": "a"})
        return response.status_code == 200

    await eventually(promoted, within=10, what="b to accept the promotion")
    quote = {"sender_id": alice.user_id, "content_type": "text/plain", "text": "first_words"}
    log = await retrying(lambda: history(alice_b, group))
    [stored] = [m for m in log if m["seq"] == reply["seq"]]
    assert (stored["reply_to"], stored["quote"], stored["mentions"]) == (
        first["seq"], quote, [alice.user_id])
    # The new owner checks replies against the log it took over, and forwards from it.
    again = await retrying(lambda: bob_c.send(group, "still true", reply_to=reply["seq"],
                                              client_msg_id="again"))
    [stored] = [m for m in await history(alice_b, group) if m["seq"] == again["seq"]]
    assert stored["quote"]["text"] == f"@{alice.handle} indeed"
    try:
        await bob_c.send(group, "re", reply_to=again["seq"] + 5)
        raise AssertionError("the new owner took a reply to a seq it does not have")
    except ApiError as exc:
        assert (exc.status, exc.code) == (404, "unknown_message")
    # Its target, owned by c, lost its replica with a: until c has a new one, that
    # target answers 503 in its result, and a retry with the same client_msg_id gives
    # the one copy.
    with trio.fail_after(20):
        while True:
            [second] = await alice_b.forward(group, again["seq"], [other],
                                             client_msg_id="fw-after")
            if "error" not in second:
                break
            assert second["error"]["code"] in ("not_acknowledged", "owner_unreachable"), second
            await trio.sleep(0.2)
    assert second["seq"] == copy["seq"] + 1
    forwarded = {m["seq"]: m for m in await history(bob_c, other)}
    assert forwarded[second["seq"]]["forwarded"] is True
    assert sorted(forwarded)[-1] == second["seq"]  # one copy, however many tries
