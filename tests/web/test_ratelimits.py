"""Rate limits over a real server: each bucket refuses with 429 and Retry-After once its
(small, configured) budget is spent, per account and per client address; the WebSocket
refuses a send with an `error` frame carrying `retry_after` and stays open."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from chatd.server import RunningServer
from tests.conftest import ServerFactory
from tests.helpers import (
    FAST_AUTH_RATELIMITS,
    PASSWORD,
    Account,
    assert_error,
    fresh_handle,
    new_account,
)
from tests.rawws import RawWebSocket

ADMIN = "admin-token-for-metrics"
#: Every bucket off, so a test turns on only the one it is about.
OFF = {name: "off" for name in (
    "messages_per_account", "messages_per_address", "message_bytes_per_account",
    "message_bytes_per_address", "new_conversations_per_account",
    "new_conversations_per_address", "group_create_per_account", "group_create_per_address",
    "group_add_per_account", "group_add_per_address", "handle_lookup_per_account",
    "handle_lookup_per_address", "media_bytes_per_account", "media_bytes_per_address")}


async def limited(start_server: ServerFactory, *, trusted: Sequence[str] = (),
                  **buckets: str) -> RunningServer:
    return await start_server(ratelimits={**OFF, **FAST_AUTH_RATELIMITS, **buckets},
                              server={"trusted_proxies": tuple(trusted),
                                      "admin_token": ADMIN})


@asynccontextmanager
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


def assert_limited(response: httpx.Response, bucket: str, *, about: float) -> None:
    """429 rate_limited naming `bucket`, with Retry-After within a second of `about`."""
    assert_error(response, 429, "rate_limited")
    assert repr(bucket) in response.json()["error"]["message"]
    retry_after = int(response.headers["Retry-After"])
    assert about - 1 <= retry_after <= about + 1, (retry_after, about)


def xff(*entries: str) -> dict[str, str]:
    return {"X-Forwarded-For": ", ".join(entries)}


async def send(account: Account, conversation_id: str, text: str = "hi",
               headers: dict[str, str] | None = None) -> httpx.Response:
    return await account.http.post("/messages/send", json={
        "conversation_id": conversation_id, "client_msg_id": os.urandom(8).hex(),
        "content_type": "text/plain", "body": text}, headers={**account.headers,
                                                             **(headers or {})})


# -- each bucket over REST ----------------------------------------------------------------------

async def test_messages_per_account(start_server: ServerFactory) -> None:
    server = await limited(start_server, messages_per_account="3/1h")
    async with client(server) as http:
        alice, bob, carol = [await new_account(http) for _ in range(3)]
        with_bob = await alice.direct_with(bob)
        with_carol = await alice.direct_with(carol)
        for _ in range(3):
            assert (await send(alice, with_bob)).status_code == 201
        # One token every 20 minutes: the next is due in 1,200 s, whichever conversation.
        assert_limited(await send(alice, with_bob), "messages", about=1200)
        assert_limited(await send(alice, with_carol), "messages", about=1200)
        # Bob's budget is his own.
        assert (await send(bob, with_bob)).status_code == 201
        # Nothing refused was written.
        history = (await bob.get(f"/messages/{with_bob}")).json()
        assert len(history["messages"]) == 4
        metrics = await http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
        assert 'chatd_ratelimited_total{bucket="messages"} 2\n' in metrics.text
        assert 'chatd_ratelimited_total{bucket="login"} 0\n' in metrics.text


async def test_message_bytes_count_bytes_not_messages(start_server: ServerFactory) -> None:
    server = await limited(start_server, message_bytes_per_account="10KiB/1h",
                           messages_per_account="2/1h")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        assert (await send(alice, conversation, "x" * 6144)).status_code == 201
        # 4 KiB left: 6 KiB more is 2 KiB short, 720 s at 10 KiB an hour.
        assert_limited(await send(alice, conversation, "x" * 6144), "message_bytes",
                       about=720)
        # The refused send spent no `messages` token either: the second of two is here.
        assert (await send(alice, conversation, "x" * 4000)).status_code == 201
        assert_limited(await send(alice, conversation, "x"), "messages", about=1800)


async def test_new_conversations_count_only_creations(start_server: ServerFactory) -> None:
    server = await limited(start_server, new_conversations_per_account="2/1h")
    async with client(server) as http:
        alice, bob, carol, dave = [await new_account(http) for _ in range(4)]

        async def open_with(other: Account) -> httpx.Response:
            return await alice.post("/conversations/direct", {"user_id": other.user_id})

        assert (await open_with(bob)).status_code == 201
        for _ in range(3):  # opening an existing one costs nothing
            assert (await open_with(bob)).status_code == 200
        assert (await open_with(carol)).status_code == 201
        assert_limited(await open_with(dave), "new_conversations", about=1800)
        # Past the limit, existing conversations are still handed out.
        assert (await open_with(bob)).status_code == 200
        assert (await open_with(carol)).status_code == 200
        # ... and the other side may still open theirs (it exists: no creation).
        assert (await bob.post("/conversations/direct",
                               {"user_id": alice.user_id})).status_code == 200


async def test_group_create(start_server: ServerFactory) -> None:
    server = await limited(start_server, group_create_per_account="2/1h")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)
        await alice.group("one", bob)
        await alice.group("two")
        response = await alice.post("/groups/create", {"name": "three", "members": []})
        assert_limited(response, "group_create", about=1800)
        await bob.group("bob's")


async def test_group_add_counts_users_added(start_server: ServerFactory) -> None:
    server = await limited(start_server, group_add_per_account="5/1h")
    async with client(server) as http:
        alice = await new_account(http)
        others = [await new_account(http) for _ in range(6)]
        # Members named at creation count: 3 of 5.
        group = await alice.group("team", *others[:3])
        # An add the owner refuses (no such group) is given back.
        response = await alice.post("/groups/123456789/add",
                                    {"user_ids": [others[3].user_id]})
        assert_error(response, 404)
        response = await alice.post(f"/groups/{group}/add",
                                    {"user_ids": [o.user_id for o in others[3:5]]})
        assert response.status_code == 200, response.text
        response = await alice.post(f"/groups/{group}/add", {"user_ids": [others[5].user_id]})
        assert_limited(response, "group_add", about=720)
        # A creation naming members is refused too: it would add them.
        response = await alice.post("/groups/create",
                                    {"name": "more", "members": [others[5].user_id]})
        assert_limited(response, "group_add", about=720)


async def test_deletes_and_timer_changes_take_the_messages_bucket(
        start_server: ServerFactory) -> None:
    """Each writes into the conversation as a message does (a tombstone and an entry, a
    hidden row, a system entry): unlimited, one client could keep the owner's committer
    busy, or hide an unbounded run."""
    server = await limited(start_server, messages_per_account="3/1h")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)
        chat = await alice.direct_with(bob)
        seq = (await send(bob, chat)).json()["seq"]
        assert (await alice.post(f"/messages/{chat}/{seq}/delete", {"for": "me"})
                ).status_code == 204
        assert (await alice.patch(f"/conversations/{chat}", {"disappearing_s": 86_400})
                ).status_code == 200
        mine = (await send(alice, chat)).json()["seq"]
        assert_limited(await alice.post(f"/messages/{chat}/{mine}/delete",
                                        {"for": "everyone"}), "messages", about=1200)
        assert_limited(await alice.patch(f"/conversations/{chat}", {"disappearing_s": 0}),
                       "messages", about=1200)
        # Nothing refused was done.
        last = (await bob.get(f"/messages/{chat}")).json()["messages"][-1]
        assert (last["seq"], last["content_type"]) == (mine, "text/plain")
        view = (await bob.get(f"/conversations/{chat}")).json()
        assert view["disappearing_s"] == 86_400


async def test_profile_privacy_and_block_changes_take_the_messages_bucket(
        start_server: ServerFactory) -> None:
    """Each is told to the user's contacts (and a block to a chat's owner): toggling one
    without limit would keep the home and every contact's session busy."""
    server = await limited(start_server, messages_per_account="2/1h")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)
        assert (await alice.patch("/me/privacy", {"last_seen": "contacts"})
                ).status_code == 200
        assert (await alice.post(f"/blocks/{bob.user_id}")).status_code == 204
        assert_limited(await alice.delete(f"/blocks/{bob.user_id}"), "messages",
                       about=1800)
        assert_limited(await alice.patch("/me", {"status": "hi"}), "messages", about=1800)
        assert_limited(await alice.patch("/me/privacy", {"profile": "nobody"}), "messages",
                       about=1800)
        # Nothing refused was done.
        assert [block["user_id"] for block in
                (await alice.get("/blocks")).json()["blocks"]] == [bob.user_id]
        assert (await alice.get("/me/privacy")).json()["profile"] == "everyone"


async def test_handle_lookup_found_or_not(start_server: ServerFactory) -> None:
    server = await limited(start_server, handle_lookup_per_account="3/15m")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)
        assert (await alice.get("/users", params={"handle": bob.handle})).status_code == 200
        for _ in range(2):  # a miss costs as much as a hit: probing is what it limits
            response = await alice.get("/users", params={"handle": fresh_handle()})
            assert_error(response, 404)
        response = await alice.get("/users", params={"handle": bob.handle})
        assert_limited(response, "handle_lookup", about=300)
        assert (await bob.get("/users", params={"handle": alice.handle})).status_code == 200


async def test_naming_users_who_do_not_exist_costs_a_lookup(
        start_server: ServerFactory) -> None:
    """User ids carry their creation time: walking them through any route that names a
    user is a lookup, charged per miss (found users cost nothing)."""
    server = await limited(start_server, handle_lookup_per_account="4/15m")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)
        missing = str(int(bob.user_id) + 1)
        probes = [lambda: alice.get(f"/users/{missing}"),
                  lambda: alice.post(f"/blocks/{missing}"),
                  lambda: alice.post("/conversations/direct", {"user_id": missing}),
                  lambda: alice.post("/groups/create", {"name": "g", "members": [missing]})]
        for probe in probes:
            assert_error(await probe(), 404, "unknown_user")
        for probe in probes:
            assert_limited(await probe(), "handle_lookup", about=225)
        # Those who exist are found as before, and another account is not charged.
        assert (await alice.get(f"/users/{bob.user_id}")).status_code == 200
        assert_error(await bob.get(f"/users/{missing}"), 404, "unknown_user")


async def test_media_bytes(start_server: ServerFactory) -> None:
    server = await limited(start_server, media_bytes_per_account="100KiB/1h")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)

        async def upload(size: int, who: Account = alice) -> httpx.Response:
            return await http.post("/media/upload", content=os.urandom(size), headers={
                **who.headers, "Content-Type": "application/octet-stream"})

        assert (await upload(60 * 1024)).status_code == 201
        # 40 KiB left: 60 KiB is 20 KiB short, 720 s at 100 KiB an hour.
        assert_limited(await upload(60 * 1024), "media_bytes", about=720)
        assert (await upload(40 * 1024)).status_code == 201
        assert (await upload(60 * 1024, bob)).status_code == 201


async def test_reports(start_server: ServerFactory) -> None:
    server = await limited(start_server, reports_per_account="2/1d",
                           reports_per_address="3/1d", trusted=["127.0.0.1"])
    async with client(server) as http:
        alice, bob, carol = [await new_account(http) for _ in range(3)]
        conversation = await bob.group("g", alice, carol)
        for n in range(3):  # seqs 2, 3 and 4
            assert (await send(bob, conversation, f"spam {n}")).status_code == 201

        async def report(who: Account, seq: int, address: str) -> httpx.Response:
            return await http.post("/reports", json={
                "conversation_id": conversation, "seq": seq, "reason": "spam"},
                headers={**who.headers, **xff(address)})

        home, cafe = "198.51.100.1", "198.51.100.2"
        assert (await report(alice, 2, home)).status_code == 201
        assert (await report(alice, 3, home)).status_code == 201
        # Alice's two a day are spent, wherever she reports from.
        assert_limited(await report(alice, 4, cafe), "reports", about=43200)
        # The home address has one left (alice's refusal at the cafe spent none of it).
        assert (await report(carol, 2, home)).status_code == 201
        assert_limited(await report(carol, 3, home), "reports", about=28800)
        assert (await report(carol, 3, cafe)).status_code == 201


async def test_login_per_account_whether_the_handle_exists_or_not(
        start_server: ServerFactory) -> None:
    server = await limited(start_server, login_per_account="2/1h", login_per_address="off")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)  # one login each

        async def login(handle: str, password: str = PASSWORD) -> httpx.Response:
            return await http.post("/login", json={"handle": handle, "password": password})

        assert_error(await login(alice.handle, "wrong password"), 401)
        # Spent: even the right password waits (each attempt costs a password hash).
        assert_limited(await login(alice.handle), "login", about=1800)
        # The handle is normalised: another spelling is the same account.
        assert_limited(await login(alice.handle.upper()), "login", about=1800)
        assert (await login(bob.handle)).status_code == 200
        # An unknown handle is limited alike, so a refusal tells nothing about existence.
        nobody = fresh_handle()
        for _ in range(2):
            assert_error(await login(nobody), 401)
        assert_limited(await login(nobody), "login", about=1800)


async def test_login_and_register_per_address(start_server: ServerFactory) -> None:
    server = await limited(start_server, login_per_address="3/1h",
                           register_per_address="2/1h", login_per_account="off")
    async with client(server) as http:
        handles = [fresh_handle(), fresh_handle(), fresh_handle()]
        for handle in handles[:2]:
            response = await http.post("/register", json={
                "handle": handle, "password": PASSWORD, "display_name": "x"})
            assert response.status_code == 201, response.text
        response = await http.post("/register", json={
            "handle": handles[2], "password": PASSWORD, "display_name": "x"})
        assert_limited(response, "register", about=1800)
        for handle in [handles[0], handles[1], "nobody_here"]:
            await http.post("/login", json={"handle": handle, "password": PASSWORD})
        response = await http.post("/login", json={"handle": handles[0], "password": PASSWORD})
        assert_limited(response, "login", about=1200)


# -- the WebSocket --------------------------------------------------------------------------------

async def ws_send(socket: RawWebSocket, conversation_id: str, req: str) -> dict[str, Any]:
    await socket.send({"type": "send", "req": req, "conversation_id": conversation_id,
                       "client_msg_id": os.urandom(8).hex(), "content_type": "text/plain",
                       "body": "hello"})
    with trio.fail_after(10):
        while True:
            frame = await socket.next_frame()
            if frame.get("req") == req:
                return frame


async def test_websocket_refusal_is_an_error_frame_and_the_socket_stays_open(
        start_server: ServerFactory) -> None:
    server = await limited(start_server, messages_per_account="2/1h")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        for codec in ("json", "msgpack"):
            socket = await RawWebSocket.connect(server.url, alice.token, codec=codec)
            try:
                if codec == "json":
                    for n in range(2):
                        assert (await ws_send(socket, conversation, f"s{n}"))["type"] == "sent"
                refused = await ws_send(socket, conversation, "over")
                assert refused["type"] == "error" and refused["code"] == "rate_limited"
                assert "'messages'" in refused["message"]
                assert 1799 <= refused["retry_after"] <= 1801
                assert isinstance(refused["retry_after"], int)
                # Still open and serving: a ping is answered, a read is applied.
                await socket.send({"type": "ping", "req": "p"})
                assert (await socket.next_frame("pong"))["req"] == "p"
                await socket.send({"type": "read", "req": "r", "conversation_id": conversation,
                                   "seq": 1})
                assert (await socket.next_frame("ok"))["req"] == "r"
            finally:
                socket.close()
        # REST and the WebSocket share the account's bucket.
        assert_limited(await send(alice, conversation), "messages", about=1800)
        socket = await RawWebSocket.connect(server.url, bob.token)
        try:
            assert (await ws_send(socket, conversation, "b"))["type"] == "sent"
        finally:
            socket.close()


async def test_websocket_address_comes_from_a_trusted_proxy(
        start_server: ServerFactory) -> None:
    server = await limited(start_server, trusted=["127.0.0.1"], messages_per_address="1/1h")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        first = await RawWebSocket.connect(server.url, alice.token,
                                           headers=xff("198.51.100.1"))
        second = await RawWebSocket.connect(server.url, alice.token,
                                            headers=xff("198.51.100.2"))
        same = await RawWebSocket.connect(server.url, bob.token,
                                          headers=xff("203.0.113.9", "198.51.100.1"))
        try:
            assert (await ws_send(first, conversation, "a"))["type"] == "sent"
            assert (await ws_send(second, conversation, "b"))["type"] == "sent"
            refused = await ws_send(same, conversation, "c")  # 198.51.100.1's budget again
            assert refused["code"] == "rate_limited" and refused["retry_after"] >= 3599
        finally:
            for socket in (first, second, same):
                socket.close()


# -- per account and per address ---------------------------------------------------------------

async def test_two_accounts_from_one_address_share_its_bucket(
        start_server: ServerFactory) -> None:
    server = await limited(start_server, messages_per_address="4/1h")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        for account in (alice, bob, alice, bob):
            assert (await send(account, conversation)).status_code == 201
        assert_limited(await send(alice, conversation), "messages", about=900)
        assert_limited(await send(bob, conversation), "messages", about=900)


async def test_one_account_from_two_addresses(start_server: ServerFactory) -> None:
    server = await limited(start_server, trusted=["127.0.0.1"],
                           messages_per_address="2/1h", messages_per_account="3/1h")
    async with client(server) as http:
        alice, bob = await new_account(http), await new_account(http)
        conversation = await alice.direct_with(bob)
        at_home, at_work = xff("198.51.100.1"), xff("198.51.100.2")
        for headers in (at_home, at_home):
            assert (await send(alice, conversation, headers=headers)).status_code == 201
        # The home address is spent; work has its own bucket ...
        assert_limited(await send(alice, conversation, headers=at_home), "messages",
                       about=1800)
        assert (await send(alice, conversation, headers=at_work)).status_code == 201
        # ... but the account's is spent wherever it comes from.
        assert_limited(await send(alice, conversation, headers=at_work), "messages",
                       about=1200)
        assert_limited(await send(alice, conversation, headers=xff("198.51.100.3")),
                       "messages", about=1200)


# -- trusted proxies ------------------------------------------------------------------------------

async def lookups(account: Account, *headers: dict[str, str]) -> list[int]:
    return [(await account.http.get("/users", params={"handle": account.handle},
                                    headers={**account.headers, **h})).status_code
            for h in headers]


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(
        start_server: ServerFactory) -> None:
    server = await limited(start_server, handle_lookup_per_address="2/1h")
    async with client(server) as http:
        alice = await new_account(http)
        statuses = await lookups(alice, xff("198.51.100.1"), xff("198.51.100.2"),
                                 xff("198.51.100.3"))
        assert statuses == [200, 200, 429]  # all of them 127.0.0.1's


async def test_forwarded_for_names_the_client_behind_a_trusted_proxy(
        start_server: ServerFactory) -> None:
    server = await limited(start_server, trusted=["127.0.0.0/8", "10.0.0.0/8"],
                           handle_lookup_per_address="2/1h")
    async with client(server) as http:
        alice = await new_account(http)
        a, b = "198.51.100.1", "198.51.100.2"
        # The right-most entry that is not a trusted proxy is the client; what a client
        # wrote to the left of it (a spoofed chain) is never believed.
        assert await lookups(alice, xff(a), xff("203.0.113.66", a), xff("203.0.113.77", a)) \
            == [200, 200, 429]
        # Several trusted proxies in a row are walked past.
        assert await lookups(alice, xff(b, "10.1.2.3"), xff("1.2.3.4", b, "10.9.9.9", "10.0.0.1")
                             ) == [200, 200]
        assert await lookups(alice, xff(b)) == [429]
        # Several headers are one list, in order.
        response = await http.get("/users", params={"handle": alice.handle},
                                  headers=[*alice.headers.items(),
                                           ("X-Forwarded-For", "198.51.100.3"),
                                           ("X-Forwarded-For", a)])
        assert response.status_code == 429
        # IPv6 clients share a bucket per /64.
        assert await lookups(alice, xff("2001:db8::1"), xff("2001:db8::2"),
                             xff("2001:db8:0:1::1"), xff("[2001:db8::3]:4711")) \
            == [200, 200, 200, 429]


async def test_malformed_forwarded_for_falls_back_to_the_proxy(
        start_server: ServerFactory) -> None:
    server = await limited(start_server, trusted=["127.0.0.1"],
                           handle_lookup_per_address="6/1h")
    async with client(server) as http:
        alice = await new_account(http)
        garbage = [xff("not an address"), {"X-Forwarded-For": ", , ,"},
                   xff("198.51.100.1", "::::"), xff("1.2.3.4.5"), xff("300.1.1.1"),
                   {"X-Forwarded-For": ""}]
        # Nothing is crashed; each falls back to the nearest trusted hop, 127.0.0.1 ...
        assert await lookups(alice, *garbage) == [200] * 6
        # ... whose bucket they have now spent, while a well-formed client has its own.
        assert await lookups(alice, {}, xff("198.51.100.1")) == [429, 200]


async def test_register_and_login_follow_the_trusted_proxy(start_server: ServerFactory) -> None:
    server = await limited(start_server, trusted=["127.0.0.1"], register_per_address="1/1h")
    async with client(server) as http:
        for n, address in enumerate(("198.51.100.1", "198.51.100.2", "198.51.100.1")):
            response = await http.post("/register", headers=xff(address), json={
                "handle": fresh_handle(), "password": PASSWORD, "display_name": "x"})
            assert response.status_code == (429 if n == 2 else 201), response.text


# -- the groups cap -------------------------------------------------------------------------------

async def test_groups_cap_on_create_add_and_invite(start_server: ServerFactory) -> None:
    server = await start_server(limits={"max_groups_per_user": 2})
    async with client(server) as http:
        alice, bob, carol = [await new_account(http) for _ in range(3)]
        await alice.group("one", bob)
        await alice.group("two", bob)
        response = await alice.post("/groups/create", {"name": "three", "members": []})
        assert_error(response, 409, "too_many_groups")
        # Carol's group: bob is at the cap, so adding him is refused, and nothing changes.
        group = await carol.group("carol's")
        response = await carol.post(f"/groups/{group}/add", {"user_ids": [bob.user_id]})
        assert_error(response, 409, "too_many_groups")
        members = (await carol.get(f"/conversations/{group}")).json()["members"]
        assert [m["user_id"] for m in members] == [carol.user_id]
        # An invite (bob takes groups from contacts only) cannot take him past it either.
        response = await bob.patch("/me/privacy", {"groups_add": "contacts"})
        assert response.status_code == 200, response.text
        response = await carol.post(f"/groups/{group}/add", {"user_ids": [bob.user_id]})
        assert response.status_code == 200, response.text
        assert_error(await bob.post(f"/groups/{group}/invite/accept"), 409, "too_many_groups")
        one = (await bob.get("/conversations")).json()["conversations"][0]["conversation_id"]
        assert (await bob.post(f"/groups/{one}/leave")).status_code in (200, 204)
        response = await bob.post(f"/groups/{group}/invite/accept")
        assert response.status_code == 200, response.text
