"""Deletion and disappearing messages when the conversation's owner is another shard than
the one the client uses: the commands' wire forms, the answers and refusals across the
mesh, and EraseMember sent by a peer."""

from __future__ import annotations

import httpx
import trio

from chatd.client import ApiError
from chatd.config import Address, ShardSpec
from chatd.domain.ring import HashRing
from chatd.domain.rules import DELETED_CONTENT_TYPE
from chatd.protocol import owner as ops
from tests.cluster.harness import Cluster, group_owned_by, history
from tests.conftest import ServerFactory
from tests.helpers import free_port, new_account


async def test_delete_and_disappearing_through_a_shard_that_does_not_own(
        cluster: Cluster) -> None:
    admin = await cluster.person(home="a")
    member = await cluster.person(home="c")
    via_c = {who.handle: await cluster.client("c", who) for who in (admin, member)}
    via_a = await cluster.client("a", member)
    # A group owned by b, used through c and a.
    group = await group_owned_by(via_c[admin.handle], "b", [member.user_id])
    first = (await via_c[member.handle].send(group, "first words"))["seq"]
    second = (await via_c[admin.handle].send(group, "admin's words"))["seq"]

    try:
        await via_c[member.handle].request("POST", f"/messages/{group}/{second}/delete",
                                           {"for": "everyone"})
        raise AssertionError("a member who is no admin deleted another's message")
    except ApiError as exc:
        assert (exc.status, exc.code) == (403, "not_sender")
    await via_c[member.handle].request("POST", f"/messages/{group}/{first}/delete",
                                       {"for": "everyone"})
    await via_c[admin.handle].request("POST", f"/messages/{group}/{second}/delete",
                                      {"for": "me"})
    entries = {m["seq"]: m for m in await history(via_a, group)}
    assert entries[first]["content_type"] == DELETED_CONTENT_TYPE
    assert entries[first]["body"] == ""
    assert entries[second]["body"] == "admin's words"  # hidden for the admin only
    assert entries[second + 1]["body"]["event"] == "message_deleted"
    admins_view = {m["seq"] for m in await history(via_c[admin.handle], group)}
    assert second not in admins_view and first in admins_view

    try:
        await via_c[member.handle].request("PATCH", f"/conversations/{group}",
                                           {"disappearing_s": 86_400})
        raise AssertionError("a member who is no admin set the group's timer")
    except ApiError as exc:
        assert (exc.status, exc.code) == (403, "not_an_admin")
    changed = await via_c[admin.handle].request("PATCH", f"/conversations/{group}",
                                                {"disappearing_s": 86_400})
    assert changed["disappearing_s"] == 86_400
    sent = await via_c[member.handle].send(group, "fleeting")
    [fleeting] = [m for m in await history(via_a, group) if m["seq"] == sent["seq"]]
    assert fleeting["expires_at"] == sent["ts"] + 86_400_000


async def test_erase_member_sent_by_a_peer(start_server: ServerFactory) -> None:
    """Two shards in this process with a real mesh: shard a asks b, the owner, to erase."""
    ports = {"a": free_port(), "b": free_port()}
    shards = tuple(ShardSpec(name, number, Address("127.0.0.1", ports[name]))
                   for number, name in enumerate(("a", "b")))
    settings = {"shards": shards, "secret": "s" * 32, "request_timeout": 5.0}
    servers = {name: await start_server(cluster={**settings, "shard": name})
               for name in ("a", "b")}
    ring = HashRing(["a", "b"])
    a = servers["a"].services
    with trio.fail_after(15):
        while not (a.router.peers and a.router.peers.is_up("b")):  # noqa: ASYNC110
            await trio.sleep(0.05)  # (the mesh offers no event for a link coming up)
    async with httpx.AsyncClient(base_url=servers["a"].url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        while True:
            group = await alice.group("g", bob)
            if ring.shard_for(int(group)) == "b":
                break
        seq = (await bob.send(group, "bob-was-here")).json()["seq"]
        assert not a.router.owns(int(group))
        assert await a.router.ask(ops.EraseMember(int(group), int(bob.user_id))) is None
        page = (await alice.get(f"/messages/{group}", params={"after": 0})).json()
        entries = {m["seq"]: m for m in page["messages"]}
        assert entries[seq]["content_type"] == DELETED_CONTENT_TYPE
        assert entries[max(entries)]["body"]["event"] == "member_erased"
        members = (await alice.get(f"/conversations/{group}")).json()["members"]
        assert [m["user_id"] for m in members] == [alice.user_id]
        b_store = servers["b"].services.store
        assert not any(b"bob-was-here" in raw for _, raw in b_store.scan_raw(
            "messages", limit=10_000))
