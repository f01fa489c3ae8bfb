"""Reactions, edits and pins when the conversation's owner is another shard than the one
the client uses: the commands' wire forms (React, Edit, Pin, EditHistory), history's
aggregates and a view's pins and unread count across the mesh, refusals included."""

from __future__ import annotations

from urllib.parse import quote

from chatd.client import ApiError
from tests.cluster.harness import Cluster, history, owner_of

THUMBS = "👍"


async def test_reactions_edits_and_pins_through_a_shard_that_does_not_own(
        cluster: Cluster) -> None:
    admin = await cluster.person(home="a")
    member = await cluster.person(home="c")
    via_c = {who.handle: await cluster.client("c", who) for who in (admin, member)}
    via_a = await cluster.client("a", member)
    while True:  # a group owned by b, used through c and a
        group = (await via_c[admin.handle].create_group("g", [member.user_id]))[
            "conversation_id"]
        if owner_of(group) == "b":
            break
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
