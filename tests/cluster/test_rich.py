"""Reactions, edits and pins when the conversation's owner is another shard than the one
the client uses: the commands' wire forms (React, Edit, Pin, EditHistory), history's
aggregates and a view's pins and unread count across the mesh, refusals included; and
their records after a failover."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from chatd.client import ApiError, ChatClient
from tests.cluster.harness import (
    Cluster,
    eventually,
    group_owned_by,
    history,
    open_cluster,
)
from tests.cluster.test_replication import REPLICATED, admin, send_until_acked

THUMBS, HEART = "👍", "❤️"


async def test_reactions_edits_and_pins_through_a_shard_that_does_not_own(
        cluster: Cluster) -> None:
    admin = await cluster.person(home="a")
    member = await cluster.person(home="c")
    via_c = {who.handle: await cluster.client("c", who) for who in (admin, member)}
    via_a = await cluster.client("a", member)
    # A group owned by b, used through c and a.
    group = await group_owned_by(via_c[admin.handle], "b", [member.user_id])
    seq = (await via_c[admin.handle].send(group, "first words"))["seq"]
    await via_c[member.handle].request("POST", f"/conversations/{group}/read", {"seq": seq})

    summary = await via_c[member.handle].request(
        "POST", f"/messages/{group}/{seq}/reactions", {"emoji": THUMBS})
    assert summary["reactions"] == {THUMBS: {"count": 1, "me": True}}
    edited = await via_c[admin.handle].request("POST", f"/messages/{group}/{seq}/edit",
                                               {"body": "first words, edited"})
    await via_c[admin.handle].request("POST", f"/conversations/{group}/pins/{seq}")

    [shown] = [m for m in await history(via_a, group) if m["seq"] == seq]
    assert shown["body"] == "first words, edited"
    assert shown["edited_at"] == edited["edited_at"]
    assert shown["reactions"] == {THUMBS: {"count": 1, "me": True}}
    edits = await via_a.request("GET", f"/messages/{group}/{seq}/edits")
    assert [entry["body"] for entry in edits["edits"]] == ["first words",
                                                           "first words, edited"]
    view = await via_a.request("GET", f"/conversations/{group}")
    assert view["pins"] == [seq]
    assert view["unread"] == 0  # the reaction, edit and pin after the read mark skipped
    await via_c[admin.handle].send(group, "second")
    assert (await via_a.request("GET", f"/conversations/{group}"))["unread"] == 1

    for method, path, body, expected in (
            ("POST", f"/messages/{group}/{seq}/edit", {"body": "x"}, (403, "not_sender")),
            ("POST", f"/conversations/{group}/pins/{seq}", None, (403, "not_an_admin")),
            ("POST", f"/messages/{group}/{seq}/reactions", {"emoji": "no"},
             (400, "invalid_emoji")),
            ("POST", f"/messages/{group}/1/reactions", {"emoji": THUMBS},
             (409, "not_reactable"))):
        try:
            await via_c[member.handle].request(method, path, body)
            raise AssertionError(f"{path} was allowed")
        except ApiError as exc:
            assert (exc.status, exc.code) == expected
    await via_c[member.handle].request(
        "DELETE", f"/messages/{group}/{seq}/reactions/{quote(THUMBS, safe='')}")
    [shown] = [m for m in await history(via_c[admin.handle], group) if m["seq"] == seq]
    assert "reactions" not in shown


async def until_acked(client: ChatClient, method: str, path: str,
                      body: dict[str, Any] | None = None, *, within: float = 20.0) -> Any:
    """A request, retried on 503 (a range catching up or moving) until answered."""
    with trio.fail_after(within):
        while True:
            try:
                return await client.request(method, path, body)
            except ApiError as exc:
                assert exc.status == 503, exc
                await trio.sleep(0.2)


async def test_reactions_edits_and_pins_survive_a_failover(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    """Group owned by a, replicated to b: after a is killed and b promoted, b serves the
    reactions, edits, pins and unread counts a acknowledged (its records replicated with
    the log), and takes new ones, including a deletion that takes them with it."""
    async with open_cluster(tmp_path, nursery, replication=REPLICATED) as cluster:
        alice, bob = await cluster.people(["b", "c"])
        alice_b, bob_c = await cluster.client("b", alice), await cluster.client("c", bob)
        group = await group_owned_by(alice_b, "a", [bob.user_id])
        seq = (await send_until_acked(alice_b, group, "before"))["seq"]
        doomed = (await send_until_acked(alice_b, group, "doomed"))["seq"]
        await until_acked(bob_c, "POST", f"/conversations/{group}/read", {"seq": doomed})
        await until_acked(bob_c, "POST", f"/messages/{group}/{seq}/reactions",
                          {"emoji": THUMBS})
        await until_acked(bob_c, "POST", f"/messages/{group}/{doomed}/reactions",
                          {"emoji": THUMBS})
        await until_acked(alice_b, "POST", f"/messages/{group}/{seq}/edit",
                          {"body": "before, edited"})
        await until_acked(alice_b, "POST", f"/messages/{group}/{doomed}/edit",
                          {"body": "doomed, edited"})
        await until_acked(alice_b, "POST", f"/conversations/{group}/pins/{seq}")
        await until_acked(alice_b, "POST", f"/conversations/{group}/pins/{doomed}")

        cluster["a"].kill()

        async def promoted() -> bool:
            response = await admin(cluster, "b", "POST", "/admin/promote", {"range": "a"})
            return response.status_code == 200

        await eventually(promoted, within=10, what="b to accept the promotion")
        view = await until_acked(bob_c, "GET", f"/conversations/{group}")
        assert view["pins"] == [seq, doomed]
        assert view["unread"] == 0  # what followed bob's read mark were no messages
        shown = {m["seq"]: m for m in await history(bob_c, group)}
        assert shown[seq]["body"] == "before, edited"
        assert shown[seq]["reactions"] == {THUMBS: {"count": 1, "me": True}}
        edits = await bob_c.request("GET", f"/messages/{group}/{seq}/edits")
        assert [entry["body"] for entry in edits["edits"]] == ["before", "before, edited"]

        # The new owner takes new ones, and a deletion takes its message's with it.
        summary = await until_acked(alice_b, "POST", f"/messages/{group}/{seq}/reactions",
                                    {"emoji": HEART})
        assert summary["reactions"] == {THUMBS: {"count": 1, "me": False},
                                        HEART: {"count": 1, "me": True}}
        await until_acked(alice_b, "POST", f"/messages/{group}/{doomed}/delete",
                          {"for": "everyone"})
        view = await bob_c.request("GET", f"/conversations/{group}")
        assert view["pins"] == [seq]
        assert view["unread"] == 1  # the message_deleted system entry
        shown = {m["seq"]: m for m in await history(bob_c, group)}
        assert "reactions" not in shown[doomed] and shown[doomed]["body"] == ""
        assert not [m for m in shown.values() if m["content_type"] == "chatd/edit"
                    and m["body"]["target"] == doomed]
