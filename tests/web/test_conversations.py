from __future__ import annotations

import httpx

from tests.conftest import ServerFactory
from tests.helpers import Account, assert_error, new_account


async def system_events(account: Account, conversation_id: str) -> list[tuple[str, ...]]:
    page = (await account.get(f"/messages/{conversation_id}", params={"after": 0})).json()
    events = []
    for message in page["messages"]:
        if message["content_type"] == "chatd/system":
            body = message["body"]
            events.append((body["event"], body["actor_id"], *body.get("user_ids", [])))
    return events


async def test_direct_conversation_is_the_same_for_the_pair(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    first = await alice.post("/conversations/direct", {"user_id": bob.user_id})
    assert first.status_code == 201
    again = await alice.post("/conversations/direct", {"user_id": bob.user_id})
    from_bob = await bob.post("/conversations/direct", {"user_id": alice.user_id})
    assert again.status_code == from_bob.status_code == 200
    conv = first.json()
    assert conv["conversation_id"] == again.json()["conversation_id"] \
        == from_bob.json()["conversation_id"]
    assert conv["kind"] == "direct"
    assert sorted(m["user_id"] for m in conv["members"]) == sorted([alice.user_id, bob.user_id])


async def test_note_to_self(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    conversation_id = await alice.direct_with(alice)
    assert (await alice.send(conversation_id, "remember milk")).status_code == 201


async def test_direct_conversation_errors(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    assert_error(await alice.post("/conversations/direct", {"user_id": "12345"}), 404,
                 "unknown_user")
    assert_error(await alice.post("/conversations/direct", {"user_id": 1.5}), 400)
    assert_error(await alice.post("/conversations/direct", {"user_id": True}), 400)
    assert_error(await alice.post("/conversations/direct", {}), 400, "missing_field")


async def test_group_lifecycle_is_recorded_in_the_log(http: httpx.AsyncClient) -> None:
    alice, bob, carol, dave = [await new_account(http) for _ in range(4)]
    group = await alice.group("Team", bob)

    conv = (await alice.get(f"/conversations/{group}")).json()
    assert conv["kind"] == "group" and conv["name"] == "Team" and conv["last_seq"] == 1
    assert {(m["user_id"], m["role"]) for m in conv["members"]} == {
        (alice.user_id, "admin"), (bob.user_id, "member")}

    assert (await alice.post(f"/groups/{group}/add", {"user_ids": [carol.user_id, dave.user_id]})
            ).status_code == 200
    assert (await alice.post(f"/groups/{group}/admins", {"user_ids": [bob.user_id]})
            ).status_code == 200
    assert (await bob.post(f"/groups/{group}/remove", {"user_ids": [dave.user_id]})
            ).status_code == 200
    renamed = await bob.patch(f"/groups/{group}", {"name": "Core team"})
    assert renamed.json()["name"] == "Core team"
    assert (await carol.post(f"/groups/{group}/leave")).status_code == 204

    assert await system_events(alice, group) == [
        ("group_created", alice.user_id, alice.user_id, bob.user_id),
        ("members_added", alice.user_id, carol.user_id, dave.user_id),
        ("admins_added", alice.user_id, bob.user_id),
        ("members_removed", bob.user_id, dave.user_id),
        ("renamed", bob.user_id),
        ("member_left", carol.user_id),
    ]
    members = (await alice.get(f"/conversations/{group}")).json()["members"]
    assert [m["user_id"] for m in members] == [alice.user_id, bob.user_id]
    # Former members can read nothing and post nothing.
    for former in (carol, dave):
        assert_error(await former.get(f"/messages/{group}"), 404, "unknown_conversation")
        assert_error(await former.send(group, "still here?"), 404, "unknown_conversation")
        assert_error(await former.get(f"/conversations/{group}"), 404, "unknown_conversation")


async def test_only_admins_change_a_group(http: httpx.AsyncClient) -> None:
    alice, bob, carol = [await new_account(http) for _ in range(3)]
    group = await alice.group("Team", bob)
    for path, body in ((f"/groups/{group}/add", {"user_ids": [carol.user_id]}),
                       (f"/groups/{group}/remove", {"user_ids": [alice.user_id]}),
                       (f"/groups/{group}/admins", {"user_ids": [bob.user_id]})):
        assert_error(await bob.post(path, body), 403, "not_an_admin")
        assert_error(await carol.post(path, body), 404, "unknown_conversation")
    assert_error(await bob.patch(f"/groups/{group}", {"name": "Mine"}), 403, "not_an_admin")
    assert_error(await alice.post(f"/groups/{group}/remove", {"user_ids": [alice.user_id]}),
                 400, "use_leave")
    assert_error(await alice.post(f"/groups/{group}/admins", {"user_ids": [carol.user_id]}),
                 400, "not_a_member")


async def test_group_input_errors(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    group = await alice.group("Team", bob)
    direct = await alice.direct_with(bob)
    assert_error(await alice.post("/groups/create", {"name": "", "members": []}), 400)
    assert_error(await alice.post("/groups/create", {"name": "x", "members": "bob"}), 400,
                 "invalid_field")
    assert_error(await alice.post("/groups/create", {"name": "x", "members": ["1"]}), 404,
                 "unknown_user")
    assert_error(await alice.post("/groups/create", {"name": "x"}), 400, "missing_field")
    assert_error(await alice.post(f"/groups/{group}/add", {"user_ids": []}), 400)
    assert_error(await alice.post(f"/groups/{group}/add", {"user_ids": ["42"]}), 404)
    assert_error(await alice.post("/groups/777/add", {"user_ids": [bob.user_id]}), 404,
                 "unknown_conversation")
    assert_error(await alice.post(f"/groups/{direct}/add", {"user_ids": [bob.user_id]}), 400,
                 "not_a_group")
    assert_error(await alice.post(f"/groups/{direct}/leave"), 400, "not_a_group")
    assert_error(await alice.patch(f"/groups/{group}", {"name": 7}), 400, "invalid_field")


async def test_last_admin_leaving_promotes_the_longest_standing_member(
        http: httpx.AsyncClient) -> None:
    alice, bob, carol = [await new_account(http) for _ in range(3)]
    group = await alice.group("Team", bob)
    await alice.post(f"/groups/{group}/add", {"user_ids": [carol.user_id]})
    assert (await alice.post(f"/groups/{group}/leave")).status_code == 204
    members = (await bob.get(f"/conversations/{group}")).json()["members"]
    assert members == [{"user_id": bob.user_id, "role": "admin"},
                       {"user_id": carol.user_id, "role": "member"}]
    assert (await bob.post(f"/groups/{group}/add", {"user_ids": [alice.user_id]})
            ).status_code == 200


async def test_new_members_see_history_from_their_joining(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    group = await alice.group("Team")
    await alice.send(group, "before bob")
    await alice.post(f"/groups/{group}/add", {"user_ids": [bob.user_id]})
    await alice.send(group, "after bob")
    texts = [m["body"] for m in (await bob.get(f"/messages/{group}")).json()["messages"]]
    assert "before bob" not in texts and "after bob" in texts
    assert (await bob.get(f"/conversations/{group}")).json()["unread"] == 2


async def test_group_size_limit(start_server: ServerFactory) -> None:
    running = await start_server(limits={"max_group_members": 3})
    async with httpx.AsyncClient(base_url=running.url) as http:
        alice, bob, carol, dave = [await new_account(http) for _ in range(4)]
        assert_error(await alice.post("/groups/create", {
            "name": "Big", "members": [bob.user_id, carol.user_id, dave.user_id]}), 409,
            "group_full")
        group = await alice.group("Small", bob)
        assert (await alice.post(f"/groups/{group}/add", {"user_ids": [carol.user_id]})
                ).status_code == 200
        assert_error(await alice.post(f"/groups/{group}/add", {"user_ids": [dave.user_id]}),
                     409, "group_full")


async def test_conversation_list_with_unread_counts(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    direct = await alice.direct_with(bob)
    group = await alice.group("Team", bob)
    await alice.send(direct, "one")
    await alice.send(direct, "two")
    await bob.send(group, "hello team")

    listing = (await bob.get("/conversations")).json()["conversations"]
    assert [c["conversation_id"] for c in listing] == [group, direct]  # most recent first
    by_id = {c["conversation_id"]: c for c in listing}
    assert (by_id[direct]["last_seq"], by_id[direct]["unread"]) == (2, 2)
    assert (by_id[group]["last_seq"], by_id[group]["unread"]) == (2, 0)  # bob wrote last

    assert (await bob.post(f"/conversations/{direct}/read", {"seq": 1})).json() == {
        "delivered_seq": 1, "read_seq": 1}
    assert (await bob.get(f"/conversations/{direct}")).json()["unread"] == 1
    # Watermarks never move back.
    assert (await bob.post(f"/conversations/{direct}/read", {"seq": 0})).json()["read_seq"] == 1
    assert_error(await bob.post(f"/conversations/{direct}/read", {"seq": 3}), 400,
                 "seq_out_of_range")
    assert_error(await bob.post(f"/conversations/{direct}/read", {"seq": "1"}), 400)
    stranger = await new_account(http)
    assert_error(await stranger.post(f"/conversations/{direct}/read", {"seq": 1}), 404,
                 "unknown_conversation")
    for seq in (-1, -(2**70)):
        assert_error(await bob.post(f"/conversations/{direct}/read", {"seq": seq}), 400,
                     "invalid_field")
    assert (await stranger.get("/conversations")).json() == {"conversations": []}
