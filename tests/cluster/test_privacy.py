"""Message requests, blocks and invites across shards: the direct chat's owner, the
blocker's home and the blocked user's shard are three different shards."""

from __future__ import annotations

import pytest
import trio

from chatd.client import ApiError
from tests.cluster.harness import Cluster, Person, messages, next_of, owner_of, owner_of_direct


async def pair_owned_by(cluster: Cluster, owner: str, *, bob_home: str,
                        alice_home: str) -> tuple[Person, Person]:
    """Bob homed on `bob_home`, Alice on `alice_home`, their chat owned by `owner`."""
    bob = await cluster.person(home=bob_home)
    for _ in range(40):
        alice = await cluster.person(home=alice_home)
        if owner_of_direct(alice.user_id, bob.user_id) == owner:
            return alice, bob
    raise AssertionError(f"no alice whose chat with bob is owned by {owner}")


async def quiet(connection: object, kind: str, wait: float = 0.5) -> None:
    with trio.move_on_after(wait):
        while True:
            event = await connection.next_event()  # type: ignore[attr-defined]
            assert event["type"] != kind, event


async def test_request_accept_and_block_across_three_shards(cluster: Cluster) -> None:
    """Alice (home a, connected to a) writes to Bob (home b, connected to b); their chat
    is owned by c. The request is listed apart for Bob; Alice sees no presence until he
    accepts; after Bob blocks her, she sees nothing and cannot write."""
    alice, bob = await pair_owned_by(cluster, "c", bob_home="b", alice_home="a")
    alice_a, bob_b = await cluster.client("a", alice), await cluster.client("b", bob)
    conversation = (await alice_a.open_direct(bob.user_id))["conversation_id"]
    assert owner_of(conversation) == "c"
    await alice_a.send(conversation, "hello from a stranger")
    assert [c["conversation_id"] for c in await bob_b.conversations()] == []
    listed = await bob_b.request("GET", "/conversations", params={"requests": 1})
    assert [c["conversation_id"] for c in listed["conversations"]] == [conversation]

    async with alice_a.connect() as a_live:
        async with bob_b.connect() as b_live:
            [got] = await messages(b_live, 1)
            await b_live.read(conversation, got["seq"])
            await quiet(a_live, "presence")
            await quiet(a_live, "receipt", wait=0.2)
        await quiet(a_live, "presence", wait=0.3)
        await bob_b.accept_request(conversation)
        async with bob_b.connect() as b_live:
            assert (await next_of(a_live, "presence"))["online"] is True
        assert (await next_of(a_live, "presence"))["online"] is False
        profile = await alice_a.request("GET", f"/users/{bob.user_id}")
        assert "last_seen" in profile

        # Bob blocks Alice through c (his home is b, the chat's owner c, she is on a).
        bob_c = await cluster.client("c", bob)
        await bob_c.request("POST", f"/blocks/{alice.user_id}")
        assert [b["user_id"] for b in (await bob_b.request("GET", "/blocks"))["blocks"]] == [
            alice.user_id]
        async with bob_b.connect():
            await bob_b.request("PATCH", "/me", {"status": "not for alice"})
            await quiet(a_live, "presence")
            await quiet(a_live, "profile", wait=0.2)
    with pytest.raises(ApiError) as refused:
        await alice_a.send(conversation, "are you there?")
    assert (refused.value.status, refused.value.code) == (403, "cannot_message")
    profile = await alice_a.request("GET", f"/users/{bob.user_id}")
    assert profile["status"] == "" and "last_seen" not in profile
    # Nor can she add him to a group (made on a; he is left out).
    group = await alice_a.create_group("g", [bob.user_id])
    assert [m["user_id"] for m in group["members"]] == [alice.user_id]


async def test_invites_across_shards(cluster: Cluster) -> None:
    """Bob (home b) only lets contacts add him: Alice's group (created through a) invites
    him; he lists and accepts it through c."""
    alice, bob = await cluster.person(home="a"), await cluster.person(home="b")
    bob_c = await cluster.client("c", bob)
    await bob_c.request("PATCH", "/me/privacy", {"groups_add": "contacts"})
    alice_a = await cluster.client("a", alice)
    group = await alice_a.create_group("across", [bob.user_id])
    assert [m["user_id"] for m in group["members"]] == [alice.user_id]
    invites = (await bob_c.request("GET", "/invites"))["invites"]
    assert [i["conversation_id"] for i in invites] == [group["conversation_id"]]
    joined = await bob_c.request("POST", f"/groups/{group['conversation_id']}/invite/accept")
    assert bob.user_id in [m["user_id"] for m in joined["members"]]
