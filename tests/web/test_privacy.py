"""Privacy settings, message requests, blocks and group invites (docs/privacy.md), on a
real shard with the default `[privacy] message_requests = true`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from chatd.client import ChatClient, LiveConnection
from chatd.server import RunningServer
from tests.conftest import ServerFactory
from tests.helpers import Account, assert_error, new_account
from tests.web.test_ws import messages, next_of, nothing_more


def client(server: RunningServer, account: Account) -> ChatClient:
    return ChatClient(server.url, token=account.token)


@asynccontextmanager
async def live(server: RunningServer, account: Account) -> AsyncIterator[LiveConnection]:
    async with client(server, account) as chat, chat.connect() as connection:
        yield connection


async def events_of(connection: LiveConnection, kind: str,
                    wait: float = 0.4) -> list[dict[str, Any]]:
    """Every event of `kind` within `wait` seconds of quiet."""
    found: list[dict[str, Any]] = []
    while True:
        with trio.move_on_after(wait) as quiet:
            event = await connection.next_event()
            if event["type"] == kind:
                found.append(event)
        if quiet.cancelled_caught:
            return found


async def open_request(alice: Account, bob: Account) -> str:
    """Alice opens a chat with Bob (a stranger) and writes: a request to Bob."""
    conversation_id = await alice.direct_with(bob, accept=False)
    assert (await alice.send(conversation_id, "hi, we met at the conference")
            ).status_code == 201
    return conversation_id


async def listed(account: Account, requests: bool = False) -> list[str]:
    response = await account.get("/conversations", params={"requests": 1} if requests else {})
    assert response.status_code == 200, response.text
    return [conv["conversation_id"] for conv in response.json()["conversations"]]


# -- settings ------------------------------------------------------------------------------

async def test_settings_default_change_and_fold_the_older_fields(
        http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    assert (await alice.get("/me/privacy")).json() == {
        "last_seen": "everyone", "profile": "everyone", "groups_add": "everyone",
        "read_receipts": True}
    changed = await alice.patch("/me/privacy", {"last_seen": "contacts", "profile": "nobody",
                                                "groups_add": "contacts",
                                                "read_receipts": False})
    assert changed.status_code == 200, changed.text
    assert changed.json() == {"last_seen": "contacts", "profile": "nobody",
                              "groups_add": "contacts", "read_receipts": False}
    me = (await alice.get("/me")).json()
    assert me["read_receipts"] is False and me["hide_last_seen"] is False
    # PATCH /me's hide_last_seen is last_seen "nobody", and the other way round.
    await alice.patch("/me", {"hide_last_seen": True})
    assert (await alice.get("/me/privacy")).json()["last_seen"] == "nobody"
    # Unhidden, the setting it hid is back ("contacts"); unhiding "nobody" is everyone.
    await alice.patch("/me", {"hide_last_seen": False})
    assert (await alice.get("/me/privacy")).json()["last_seen"] == "contacts"
    await alice.patch("/me/privacy", {"last_seen": "nobody"})
    assert (await alice.get("/me")).json()["hide_last_seen"] is True
    await alice.patch("/me", {"hide_last_seen": False})
    assert (await alice.get("/me/privacy")).json()["last_seen"] == "everyone"
    # Bad input.
    assert_error(await alice.patch("/me/privacy", {"last_seen": "friends"}), 400)
    assert_error(await alice.patch("/me/privacy", {"groups_add": "nobody"}), 400)
    assert_error(await alice.patch("/me/privacy", {"profile": 1}), 400)
    assert_error(await alice.patch("/me/privacy", {"read_receipts": "yes"}), 400)
    assert_error(await alice.patch("/me/privacy", {"colour": "blue"}), 400)


@pytest.mark.parametrize("setting", ["everyone", "contacts", "nobody"])
async def test_profile_and_last_seen_follow_the_setting(
        server: RunningServer, http: httpx.AsyncClient, setting: str) -> None:
    """A contact, a group co-member and a stranger look at Bob: status text and last
    seen as his setting allows, by id and by handle, and in live profile and presence
    frames."""
    bob, contact, member, stranger = [await new_account(http) for _ in range(4)]
    await contact.direct_with(bob)  # accepted: contacts
    await bob.group("club", member)
    await bob.patch("/me", {"status": "gone fishing"})
    async with live(server, bob):
        pass  # a last seen to show
    await bob.patch("/me/privacy", {"last_seen": setting, "profile": setting})
    shows = {"contact": setting != "nobody", "member": setting == "everyone",
             "stranger": setting == "everyone"}
    for name, viewer in (("contact", contact), ("member", member), ("stranger", stranger)):
        for path, params in ((f"/users/{bob.user_id}", {}),
                             ("/users", {"handle": bob.handle})):
            profile = (await viewer.get(path, params=params)).json()
            assert (profile["status"] == "gone fishing") == shows[name], (name, profile)
            assert ("last_seen" in profile) == shows[name], (name, profile)
    # Live: a profile change reaches everyone who shares a conversation, with the status
    # only where the setting allows; the offline presence carries last seen likewise.
    async with live(server, contact) as c, live(server, member) as m:
        await bob.patch("/me", {"status": "back"})
        [to_contact] = await events_of(c, "profile")
        [to_member] = await events_of(m, "profile")
        assert (to_contact["user"]["status"] == "back") == shows["contact"]
        assert (to_member["user"]["status"] == "back") == shows["member"]
        async with live(server, bob):
            await next_of(c, "presence")
            await next_of(m, "presence")
        offline_c = await next_of(c, "presence")
        offline_m = await next_of(m, "presence")
        assert offline_c["online"] is False and offline_m["online"] is False
        assert (offline_c["last_seen"] is not None) == shows["contact"]
        assert (offline_m["last_seen"] is not None) == shows["member"]


# -- message requests ----------------------------------------------------------------------

async def test_a_request_is_listed_apart_and_a_stranger_learns_nothing_until_accepted(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    await bob.patch("/me", {"status": "private thoughts"})
    async with live(server, bob):
        pass
    opened: list[tuple[int, int]] = []
    answered: list[tuple[int, int, str]] = []
    server.services.requests.on_request_opened(lambda *args: opened.append(args))
    server.services.requests.on_request_answered(lambda *args: answered.append(args))
    conversation_id = await open_request(alice, bob)
    assert opened == [(int(alice.user_id), int(bob.user_id))]
    # Listed apart for Bob; Alice sees her chat as usual, marked as sent.
    assert await listed(bob) == [] and await listed(bob, requests=True) == [conversation_id]
    assert await listed(alice) == [conversation_id]
    assert (await alice.get(f"/conversations/{conversation_id}")).json()["request"] == "sent"
    assert (await bob.get(f"/conversations/{conversation_id}")).json()["request"] == "received"
    # Alice sees no status and no last seen of Bob's (his settings say everyone).
    profile = (await alice.get(f"/users/{bob.user_id}")).json()
    assert profile["status"] == "" and "last_seen" not in profile
    async with live(server, alice) as a:
        async with live(server, bob) as b:
            # Bob gets the request live; his receipts are not sent, nor his presence.
            [got] = await messages(b, 1)
            await b.ack(conversation_id, got["seq"])
            await b.read(conversation_id, got["seq"])
            await b.typing(conversation_id)
            await nothing_more(a, "presence", wait=0.3)
            assert await events_of(a, "receipt") == []
            assert await events_of(a, "typing", wait=0.1) == []
            status = (await alice.get(f"/messages/{conversation_id}/1/status")).json()
            assert {m["user_id"]: m["read"] for m in status["members"]}[bob.user_id] is False
        assert await events_of(a, "presence") == []
        accepted = await bob.post(f"/conversations/{conversation_id}/accept")
        assert accepted.status_code == 200 and "request" not in accepted.json()
        assert answered == [(int(alice.user_id), int(bob.user_id), "accepted")]
        # Now they are contacts: presence, last seen, status and receipts flow.
        async with live(server, bob) as b:
            assert (await next_of(a, "presence"))["online"] is True
            assert (await alice.send(conversation_id, "thanks")).status_code == 201
            [got] = await messages(b, 1)
            await b.read(conversation_id, got["seq"])
            assert (await next_of(a, "receipt"))["read_seq"] == got["seq"]
        offline = await next_of(a, "presence")
        assert offline["online"] is False and offline["last_seen"] is not None
    profile = (await alice.get(f"/users/{bob.user_id}")).json()
    assert profile["status"] == "private thoughts" and "last_seen" in profile
    assert await listed(bob) == [conversation_id] and await listed(bob, requests=True) == []
    # Only a request's recipient answers it, once.
    assert_error(await alice.post(f"/conversations/{conversation_id}/accept"), 409,
                 "not_a_request")
    assert_error(await bob.post(f"/conversations/{conversation_id}/decline"), 409,
                 "not_a_request")


async def test_replying_accepts(http: httpx.AsyncClient, server: RunningServer) -> None:
    alice, bob = await new_account(http), await new_account(http)
    answered: list[tuple[int, int, str]] = []
    server.services.requests.on_request_answered(lambda *args: answered.append(args))
    conversation_id = await open_request(alice, bob)
    assert (await bob.send(conversation_id, "hello!")).status_code == 201
    assert answered == [(int(alice.user_id), int(bob.user_id), "accepted")]
    assert await listed(bob) == [conversation_id]
    assert "request" not in (await alice.get(f"/conversations/{conversation_id}")).json()


async def test_declining_hides_the_request_and_stops_its_sender(
        http: httpx.AsyncClient, server: RunningServer) -> None:
    alice, bob, carol = [await new_account(http) for _ in range(3)]
    answered: list[tuple[int, int, str]] = []
    server.services.requests.on_request_answered(lambda *args: answered.append(args))
    conversation_id = await open_request(alice, bob)
    declined = await bob.post(f"/conversations/{conversation_id}/decline")
    assert declined.status_code == 200, declined.text
    assert answered == [(int(alice.user_id), int(bob.user_id), "declined")]
    assert await listed(bob) == [] and await listed(bob, requests=True) == []
    # Alice is not told: her chat looks as before, but her sends are refused with the
    # answer a block gives.
    assert await listed(alice) == [conversation_id]
    assert (await alice.get(f"/conversations/{conversation_id}")).json()["request"] == "sent"
    assert_error(await alice.send(conversation_id, "hello?"), 403, "cannot_message")
    # A stranger cannot answer it; a non-member learns nothing.
    assert_error(await carol.post(f"/conversations/{conversation_id}/accept"), 404,
                 "unknown_conversation")
    assert_error(await bob.post("/conversations/4242/accept"), 404, "unknown_conversation")
    # Bob may change his mind (a reply accepts too).
    assert (await bob.post(f"/conversations/{conversation_id}/accept")).status_code == 200
    assert (await alice.send(conversation_id, "thanks")).status_code == 201


async def test_requests_can_be_switched_off(start_server: ServerFactory) -> None:
    server = await start_server(privacy={"message_requests": False})
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation_id = await alice.direct_with(bob, accept=False)
        assert await listed(bob) == [conversation_id]
        assert "request" not in (await bob.get(f"/conversations/{conversation_id}")).json()


# -- blocks --------------------------------------------------------------------------------

async def test_blocks_routes_and_bad_input(http: httpx.AsyncClient) -> None:
    alice, bob, carol = [await new_account(http) for _ in range(3)]
    assert (await alice.get("/blocks")).json() == {"blocks": []}
    assert (await alice.post(f"/blocks/{bob.user_id}")).status_code == 204
    assert (await alice.post(f"/blocks/{bob.user_id}")).status_code == 204  # idempotent
    assert (await alice.post(f"/blocks/{carol.user_id}")).status_code == 204
    blocks = (await alice.get("/blocks")).json()["blocks"]
    assert [entry["user_id"] for entry in blocks] == [bob.user_id, carol.user_id]
    assert all(isinstance(entry["blocked_at"], int) for entry in blocks)
    assert (await alice.delete(f"/blocks/{carol.user_id}")).status_code == 204
    assert [e["user_id"] for e in (await alice.get("/blocks")).json()["blocks"]] == [
        bob.user_id]
    assert (await bob.get("/blocks")).json() == {"blocks": []}
    assert_error(await alice.post(f"/blocks/{alice.user_id}"), 400, "cannot_block_self")
    assert_error(await alice.post("/blocks/12345"), 404, "unknown_user")
    assert_error(await alice.post("/blocks/abc"), 400)
    assert_error(await alice.delete("/blocks/12345"), 404, "unknown_user")
    assert_error(await http.get("/blocks"), 401)


async def test_nothing_at_all_after_a_block(server: RunningServer,
                                            http: httpx.AsyncClient) -> None:
    """Bob blocks Alice, a contact who shares a group with him: she cannot write to him
    directly, open a chat, add him to a group, see his presence, last seen, status or
    profile changes."""
    alice, bob, carol = [await new_account(http) for _ in range(3)]
    conversation_id = await alice.direct_with(bob)
    group = await carol.group("club", alice, bob)
    await bob.patch("/me", {"status": "here"})
    async with live(server, alice) as a:
        async with live(server, bob):
            assert (await next_of(a, "presence"))["online"] is True
        await next_of(a, "presence")
        assert (await bob.post(f"/blocks/{alice.user_id}")).status_code == 204
        # Nothing of Bob reaches Alice: presence, profile changes.
        async with live(server, bob):
            await bob.patch("/me", {"status": "hiding"})
            assert await events_of(a, "presence") == []
            assert await events_of(a, "profile") == []
        assert await events_of(a, "presence") == []
    profile = (await alice.get(f"/users/{bob.user_id}")).json()
    assert profile["status"] == "" and "last_seen" not in profile
    # No direct message; the answer does not say it is a block.
    assert_error(await alice.send(conversation_id, "why?"), 403, "cannot_message")
    # Bob must unblock to write himself.
    assert_error(await bob.send(conversation_id, "bye"), 403, "you_blocked")
    # No group add: Bob is left out.
    other = (await alice.post("/groups/create", {"name": "g", "members": [bob.user_id]})).json()
    assert [m["user_id"] for m in other["members"]] == [alice.user_id]
    assert (await bob.get("/invites")).json() == {"invites": []}
    # Alice connecting later is not told Bob is online (they share a group).
    async with live(server, bob), live(server, alice) as a:
        assert await events_of(a, "presence") == []
    # The group itself goes on (blocking is about the two of them).
    assert (await alice.send(group, "hi all")).status_code == 201
    # Unblocked: they may write again.
    assert (await bob.delete(f"/blocks/{alice.user_id}")).status_code == 204
    assert (await alice.send(conversation_id, "friends again?")).status_code == 201


async def test_a_blocked_stranger_cannot_open_a_request(http: httpx.AsyncClient,
                                                        server: RunningServer) -> None:
    alice, bob = await new_account(http), await new_account(http)
    opened: list[tuple[int, int]] = []
    server.services.requests.on_request_opened(lambda *args: opened.append(args))
    assert (await bob.post(f"/blocks/{alice.user_id}")).status_code == 204
    assert_error(await alice.post("/conversations/direct", {"user_id": bob.user_id}), 403,
                 "cannot_message")
    assert await listed(bob) == [] and await listed(bob, requests=True) == []
    assert opened == []
    # Unblocked, Alice's chat is a request like any stranger's.
    assert (await bob.delete(f"/blocks/{alice.user_id}")).status_code == 204
    conversation_id = await open_request(alice, bob)
    assert await listed(bob, requests=True) == [conversation_id]


async def test_blocking_a_request_answers_it(http: httpx.AsyncClient,
                                            server: RunningServer) -> None:
    alice, bob = await new_account(http), await new_account(http)
    answered: list[tuple[int, int, str]] = []
    server.services.requests.on_request_answered(lambda *args: answered.append(args))
    conversation_id = await open_request(alice, bob)
    assert (await bob.post(f"/blocks/{alice.user_id}")).status_code == 204
    assert answered == [(int(alice.user_id), int(bob.user_id), "blocked")]
    assert await listed(bob, requests=True) == []
    assert (await bob.get(f"/conversations/{conversation_id}")).json()["blocked"] is True
    assert "blocked" not in (await alice.get(f"/conversations/{conversation_id}")).json()
    assert_error(await alice.send(conversation_id, "?"), 403, "cannot_message")


# -- group invites ---------------------------------------------------------------------------

async def test_groups_add_contacts_invites_instead(server: RunningServer,
                                                  http: httpx.AsyncClient) -> None:
    alice, bob, carol, dave = [await new_account(http) for _ in range(4)]
    for person in (bob, carol):
        await person.patch("/me/privacy", {"groups_add": "contacts"})
    await alice.direct_with(carol)  # Carol's contact: added directly
    async with live(server, bob) as b:
        created = await alice.post("/groups/create", {
            "name": "trip", "members": [bob.user_id, carol.user_id, dave.user_id]})
        group = created.json()["conversation_id"]
        assert sorted(m["user_id"] for m in created.json()["members"]) == sorted(
            [alice.user_id, carol.user_id, dave.user_id])
        invite = await next_of(b, "invite")
        assert invite["conversation_id"] == group and invite["invited_by"] == alice.user_id
    invites = (await bob.get("/invites")).json()["invites"]
    assert [(i["conversation_id"], i["name"], i["invited_by"]) for i in invites] == [
        (group, "trip", alice.user_id)]
    # Not a member until he accepts: he reads nothing.
    assert_error(await bob.get(f"/messages/{group}"), 404, "unknown_conversation")
    joined = await bob.post(f"/groups/{group}/invite/accept")
    assert joined.status_code == 200, joined.text
    assert bob.user_id in [m["user_id"] for m in joined.json()["members"]]
    page = (await bob.get(f"/messages/{group}", params={"after": 0})).json()["messages"]
    assert page[-1]["body"]["event"] == "invite_accepted"
    assert page[-1]["body"]["invited_by"] == alice.user_id
    assert (await bob.get("/invites")).json() == {"invites": []}
    assert_error(await bob.post(f"/groups/{group}/invite/accept"), 404)
    # Adding later invites too; declining drops the invite.
    erin = await new_account(http)
    await erin.patch("/me/privacy", {"groups_add": "contacts"})
    added = await alice.post(f"/groups/{group}/add", {"user_ids": [erin.user_id]})
    assert erin.user_id not in [m["user_id"] for m in added.json()["members"]]
    assert (await erin.post(f"/groups/{group}/invite/decline")).status_code == 204
    assert (await erin.get("/invites")).json() == {"invites": []}
    assert_error(await erin.post(f"/groups/{group}/invite/accept"), 404)
    # A non-admin cannot invite either.
    assert_error(await dave.post(f"/groups/{group}/add", {"user_ids": [erin.user_id]}), 403,
                 "not_an_admin")
