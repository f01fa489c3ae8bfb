"""A hostile stranger, or a blocked user, against the privacy rules (docs/privacy.md):
each test is a way around them that was found open, and stays closed."""

from __future__ import annotations

import httpx

from chatd.server import RunningServer
from tests.helpers import assert_error, new_account
from tests.web.test_privacy import events_of, live, open_request


async def test_a_blocked_user_cannot_write_into_the_chat_through_its_timer(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    """A disappearing-timer change is a system entry delivered live into the other's
    chat: a blocked user (or a declined requester) could post into it at will, with no
    rate limit, and change the blocker's timer."""
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    assert (await alice.post(f"/blocks/{bob.user_id}")).status_code == 204
    async with live(server, alice) as a:
        assert_error(await bob.patch(f"/conversations/{conversation_id}",
                                     {"disappearing_s": 86400}), 403, "cannot_message")
        assert await events_of(a, "message") == []
    view = (await alice.get(f"/conversations/{conversation_id}")).json()
    assert view["disappearing_s"] == 0 and view["last_seq"] == 0
    # The blocker is refused too (as for a message), until they unblock.
    assert_error(await alice.patch(f"/conversations/{conversation_id}",
                                   {"disappearing_s": 86400}), 403, "you_blocked")

    # A declined request's sender likewise.
    carol = await new_account(http)
    request = await open_request(carol, alice)
    assert (await alice.post(f"/conversations/{request}/decline")).status_code == 200
    head = (await alice.get(f"/conversations/{request}")).json()["last_seq"]
    assert_error(await carol.patch(f"/conversations/{request}", {"disappearing_s": 86400}),
                 403, "cannot_message")
    assert (await alice.get(f"/conversations/{request}")).json()["last_seq"] == head


async def test_a_removed_member_cannot_come_back_through_an_old_invite(
        http: httpx.AsyncClient) -> None:
    """An invite outlived its invitee's joining by another path (an add once their
    setting allowed it): removed by the admins, they came back by accepting it."""
    alice, mallory = await new_account(http), await new_account(http)
    await mallory.patch("/me/privacy", {"groups_add": "contacts"})
    group = (await alice.post("/groups/create", {
        "name": "board", "members": [mallory.user_id]})).json()["conversation_id"]
    assert [i["conversation_id"] for i in (await mallory.get("/invites")).json()[
        "invites"]] == [group]
    # She lets anyone add her, and is added: the invite is answered by that.
    await mallory.patch("/me/privacy", {"groups_add": "everyone"})
    added = await alice.post(f"/groups/{group}/add", {"user_ids": [mallory.user_id]})
    assert mallory.user_id in [m["user_id"] for m in added.json()["members"]]
    assert (await mallory.get("/invites")).json() == {"invites": []}
    # Removed, she stays out.
    removed = await alice.post(f"/groups/{group}/remove", {"user_ids": [mallory.user_id]})
    assert removed.status_code == 200, removed.text
    assert_error(await mallory.post(f"/groups/{group}/invite/accept"), 404,
                 "unknown_conversation")
    members = (await alice.get(f"/conversations/{group}")).json()["members"]
    assert mallory.user_id not in [m["user_id"] for m in members]


async def test_adding_an_invited_user_again_does_not_notify_them_again(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    """Each add of someone already invited pushed another `invite` frame to them: a
    stranger could buzz a user who opted out of being added (groups_add contacts) as
    fast as the group_add bucket allows, from one group."""
    alice, bob = await new_account(http), await new_account(http)
    await bob.patch("/me/privacy", {"groups_add": "contacts"})
    group = (await alice.post("/groups/create", {"name": "spam", "members": []})
             ).json()["conversation_id"]
    async with live(server, bob) as b:
        for _ in range(5):
            added = await alice.post(f"/groups/{group}/add", {"user_ids": [bob.user_id]})
            assert added.status_code == 200, added.text
        assert len(await events_of(b, "invite")) == 1
    assert len((await bob.get("/invites")).json()["invites"]) == 1


async def test_a_blocked_user_cannot_write_into_the_chat_through_pins(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    """A pin or unpin is a `chatd/pin` entry delivered live into the other's chat: across
    a block, or a declined request, it was a way to keep writing there."""
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    assert (await alice.send(conversation_id, "pin me")).status_code == 201
    assert (await alice.post(f"/blocks/{bob.user_id}")).status_code == 204
    async with live(server, alice) as a:
        assert_error(await bob.post(f"/conversations/{conversation_id}/pins/1"), 403,
                     "cannot_message")
        assert_error(await bob.delete(f"/conversations/{conversation_id}/pins/1"), 403,
                     "cannot_message")
        # (Her own message comes back in the catch-up; nothing after it.)
        assert [event["message"]["seq"] for event in await events_of(a, "message")] == [1]
    assert (await alice.get(f"/conversations/{conversation_id}")).json()["last_seq"] == 1

    carol = await new_account(http)
    request = await open_request(carol, alice)
    assert (await alice.post(f"/conversations/{request}/decline")).status_code == 200
    assert_error(await carol.post(f"/conversations/{request}/pins/1"), 403,
                 "cannot_message")
    assert (await alice.get(f"/conversations/{request}")).json()["last_seq"] == 1
