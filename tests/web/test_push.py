"""Push notifications end to end: a real server, real WebSocket clients, and local fakes
of a Web Push service and a gateway (tests/web/push_fakes.py) that decrypt, check VAPID
and record what arrives. Nothing leaves the machine: `push.allow_private_endpoints` lets
the server push to loopback over http."""

from __future__ import annotations

import base64
import io
import itertools
import json
import stat
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from chatd.server import RunningServer
from chatd.services.push.vapid import VapidKey
from tests.conftest import ServerFactory
from tests.helpers import PASSWORD, Account, assert_error, live, login, new_account
from tests.web.push_fakes import FakePushServer, Script, fake_push_server

#: Short times, so the tests take seconds.
PUSH = {"allow_private_endpoints": True, "grace_s": 1.5, "coalesce_s": 1.5,
        "backoff_s": 0.2, "max_backoff_s": 2.0, "timeout_s": 2.0}


async def _start(start_server: ServerFactory, **push: Any) -> tuple[RunningServer,
                                                                    httpx.AsyncClient]:
    server = await start_server(push={**PUSH, **push},
                                ratelimits={"messages_per_account": "1000/1s burst 1000"})
    return server, httpx.AsyncClient(base_url=server.url, timeout=30)


async def _subscribe(account: Account, fake: FakePushServer, name: str) -> str:
    fake.vapid_key = (await account.get("/push/vapid")).json()["public_key"]
    response = await account.post("/push/subscriptions", fake.subscription(name).body())
    assert response.status_code == 201, response.text
    subscription_id: str = response.json()["subscription_id"]
    return subscription_id


async def _until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll what has no event to wait on (another service's state, a route)."""
    with trio.fail_after(within):
        while not await check():  # noqa: ASYNC110  # state with no event to wait on
            await trio.sleep(0.03)


async def _send(account: Account, conversation: str, text: str) -> int:
    response = await account.send(conversation, text)
    assert response.status_code == 201, response.text
    seq: int = response.json()["seq"]
    return seq


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def checked() -> bool:
        return check()

    return checked


async def _no_subscriptions(account: Account) -> bool:
    return not (await account.get("/push/subscriptions")).json()["subscriptions"]


async def _quiet(fake: FakePushServer, path: str, seconds: float) -> None:
    """Nothing (more) reaches `path` for `seconds`."""
    before = len([item for item in fake.received if item.path == path])
    await trio.sleep(seconds)
    assert len([item for item in fake.received if item.path == path]) == before


async def test_vapid_key_is_made_once_and_kept(start_server: ServerFactory) -> None:
    server, http = await _start(start_server)
    async with http:
        assert_error(await http.get("/push/vapid"), 401)
        account = await new_account(http)
        key = (await account.get("/push/vapid")).json()["public_key"]
    assert len(key) == 87 and key.startswith("B")  # an uncompressed P-256 point
    directory = Path(server.services.config.storage.data_dir) / "push"
    path = directory / "vapid_private.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # What a restart reads: the same key.
    assert VapidKey.load_or_create(directory, "mailto:a@b.example").public_key == key


async def test_offline_device_pushed_online_one_not(nursery: trio.Nursery,
                                                    start_server: ServerFactory) -> None:
    server, http = await _start(start_server)
    async with http, fake_push_server(nursery) as fake:
        alice, bob = await new_account(http), await new_account(http, device_name="phone")
        laptop = await login(http, bob.handle, "laptop")
        tablet = await login(http, bob.handle, "tablet")
        for device, name in ((bob, "phone"), (laptop, "laptop"), (tablet, "tablet")):
            await _subscribe(device, fake, name)
        conversation = await alice.direct_with(bob)
        async with live(server.url, laptop) as laptop_socket, \
                live(server.url, tablet) as _tablet_socket:
            start = trio.current_time()
            seq = await _send(alice, conversation, "hello bob")
            # The laptop is live and acknowledges; the tablet is live and does not.
            while True:
                with trio.fail_after(5):
                    event = await laptop_socket.next_event()
                if event["type"] == "message" and event["message"]["seq"] == seq:
                    await laptop_socket.ack(conversation, seq)
                    break
            [phone_push] = await fake.wait_for(1, "/push/phone")
            # No socket: pushed at once, not after the grace period.
            assert phone_push.at - start < PUSH["grace_s"]
            assert phone_push.payload == {"conversation_id": conversation, "seq": seq,
                                          "unread": 1}
            assert phone_push.headers["urgency"] == "high"  # a direct chat
            assert phone_push.headers["ttl"] == "86400"
            assert phone_push.claims["aud"] == fake.origin
            [tablet_push] = await fake.wait_for(1, "/push/tablet")
            # Live but silent: pushed once the grace period has passed.
            assert tablet_push.at - start >= PUSH["grace_s"]
            await _quiet(fake, "/push/laptop", 0.5)
        assert not [item for item in fake.received if item.refused]


async def test_pushes_are_coalesced_per_conversation(nursery: trio.Nursery,
                                                     start_server: ServerFactory) -> None:
    _server, http = await _start(start_server)
    async with http, fake_push_server(nursery) as fake:
        alice, bob = await new_account(http), await new_account(http)
        await _subscribe(bob, fake, "bob")
        conversation = await alice.direct_with(bob)
        group = await alice.group("team", bob)
        for index in range(5):
            await _send(alice, conversation, f"message {index}")
        await _send(alice, group, "in the group")
        await trio.sleep(0.3)
        # One push at once for each conversation, then the direct chat's next one
        # folding the rest, after coalesce_s.
        first = fake.accepted("/push/bob")
        assert len(first) <= 3
        pushes = await fake.wait_for(3, "/push/bob")
        await _quiet(fake, "/push/bob", PUSH["coalesce_s"] + 0.5)
        direct = [push for push in fake.accepted("/push/bob")
                  if push.payload and push.payload["conversation_id"] == conversation]
        assert len(direct) == 2, [push.payload for push in pushes]
        assert direct[0].payload is not None and direct[1].payload is not None
        assert direct[1].payload["unread"] == 5
        # (Measured on arrival: the first push also waited for its conversation lookup.)
        assert direct[1].at - direct[0].at >= PUSH["coalesce_s"] - 0.4
        # One Topic per conversation: the push service may replace an undelivered one.
        assert direct[0].headers["topic"] == direct[1].headers["topic"]
        in_group = [push for push in fake.accepted("/push/bob")
                    if push.payload and push.payload["conversation_id"] == group]
        assert len(in_group) == 1
        assert in_group[0].headers["topic"] != direct[0].headers["topic"]
        assert in_group[0].headers["urgency"] == "normal"


async def test_mute_silences_but_a_mention_notifies(nursery: trio.Nursery,
                                                    start_server: ServerFactory) -> None:
    _server, http = await _start(start_server)
    async with http, fake_push_server(nursery) as fake:
        alice, bob, carol = [await new_account(http) for _ in range(3)]
        await _subscribe(bob, fake, "bob")
        group = await alice.group("team", bob, carol)
        forever = 10**15
        muted = await bob.patch(f"/conversations/{group}/notifications",
                                {"muted_until": forever})
        assert muted.status_code == 200, muted.text
        await _send(alice, group, "nobody in particular")
        await _quiet(fake, "/push/bob", 1.0)
        mention = await _send(alice, group, f"@{bob.handle} look at this")
        [push] = await fake.wait_for(1, "/push/bob")
        assert push.payload is not None and push.payload["seq"] == mention
        # Unmuted, any message notifies again (after the coalescing window).
        await bob.patch(f"/conversations/{group}/notifications", {"muted_until": 0})
        await trio.sleep(PUSH["coalesce_s"])
        await _send(alice, group, "plain again")
        await fake.wait_for(2, "/push/bob")


async def test_previews_only_when_allowed(nursery: trio.Nursery,
                                          start_server: ServerFactory) -> None:
    _server, http = await _start(start_server, coalesce_s=0.0)
    async with http, fake_push_server(nursery) as fake:
        alice, bob = await new_account(http), await new_account(http)
        await _subscribe(bob, fake, "bob")
        conversation = await alice.direct_with(bob)
        await _send(alice, conversation, "secret plans")
        [plain] = await fake.wait_for(1, "/push/bob")
        assert plain.payload is not None
        assert "preview" not in plain.payload and "sender_name" not in plain.payload
        await bob.patch("/me/notifications/previews", {"previews": True})
        await _send(alice, conversation, "  shared\nplans  " + "x" * 300)
        pushes = await fake.wait_for(2, "/push/bob")
        payload = pushes[1].payload
        assert payload is not None
        assert payload["sender_name"] == alice.handle.title()
        assert payload["preview"].startswith("shared plans xx") and len(payload["preview"]) == 100


async def test_no_preview_for_encrypted_conversations(nursery: trio.Nursery,
                                                      start_server: ServerFactory) -> None:
    _server, http = await _start(start_server, coalesce_s=0.0)
    async with http, fake_push_server(nursery) as fake:
        alice, bob = await new_account(http), await new_account(http)
        await _subscribe(bob, fake, "bob")
        await bob.patch("/me/notifications/previews", {"previews": True})
        opened = await alice.post("/conversations/direct",
                                  {"user_id": bob.user_id, "encrypted": True})
        assert opened.status_code == 201, opened.text
        secret = opened.json()["conversation_id"]
        sent = await alice.post("/messages/send", {
            "conversation_id": secret, "client_msg_id": "e1",
            "content_type": "application/vnd.chatd.megolm",
            "body": base64.b64encode(b"ciphertext bytes").decode()})
        assert sent.status_code == 201, sent.text
        [push] = await fake.wait_for(1, "/push/bob")
        # "New message": neither the sender's name nor any text, previews on or not.
        assert push.payload == {"conversation_id": secret, "seq": sent.json()["seq"],
                                "unread": 1}
        # The same user's plaintext chat, for contrast, does carry both.
        group = await alice.group("plain", bob)
        await _send(alice, group, "visible")
        pushes = await fake.wait_for(2, "/push/bob")
        assert pushes[1].payload is not None and pushes[1].payload["preview"] == "visible"
        assert pushes[1].payload["sender_name"] == alice.handle.title()


async def test_reaction_notifies_only_the_author(nursery: trio.Nursery,
                                                 start_server: ServerFactory) -> None:
    _server, http = await _start(start_server, coalesce_s=0.0)
    async with http, fake_push_server(nursery) as fake:
        alice, bob, carol = [await new_account(http) for _ in range(3)]
        await _subscribe(alice, fake, "alice")
        await _subscribe(carol, fake, "carol")
        group = await bob.group("team", alice, carol)
        sent = await _send(alice, group, "vote please")
        await fake.wait_for(1, "/push/carol")
        reacted = await bob.post(f"/messages/{group}/{sent}/reactions",
                                 {"emoji": "👍"})
        assert reacted.status_code == 200, reacted.text
        [push] = await fake.wait_for(1, "/push/alice")
        assert push.payload is not None and push.payload["seq"] > sent
        await _quiet(fake, "/push/carol", 0.5)
        assert len(fake.accepted("/push/carol")) == 1


async def test_gone_subscription_is_deleted(nursery: trio.Nursery,
                                            start_server: ServerFactory) -> None:
    _server, http = await _start(start_server)
    async with http, fake_push_server(nursery) as fake:
        alice, bob = await new_account(http), await new_account(http)
        await _subscribe(bob, fake, "bob")
        assert len((await bob.get("/push/subscriptions")).json()["subscriptions"]) == 1
        fake.scripts["/push/bob"] = Script(statuses=[410])
        conversation = await alice.direct_with(bob)
        await _send(alice, conversation, "are you there")
        await _until(lambda: _no_subscriptions(bob))
        # Gone for good: later messages push nothing.
        await trio.sleep(PUSH["coalesce_s"])
        await _send(alice, conversation, "hello?")
        await _quiet(fake, "/push/bob", 1.0)
        assert len([item for item in fake.received if item.path == "/push/bob"]) == 1


async def test_server_errors_are_retried_with_backoff(nursery: trio.Nursery,
                                                      start_server: ServerFactory) -> None:
    server, http = await _start(start_server)
    async with http, fake_push_server(nursery) as fake:
        alice, bob = await new_account(http), await new_account(http)
        await _subscribe(bob, fake, "bob")
        fake.scripts["/push/bob"] = Script(statuses=[503, 502, 500])
        conversation = await alice.direct_with(bob)
        await _send(alice, conversation, "eventually")
        await fake.wait_for(1, "/push/bob")
        tries = [item.at for item in fake.received if item.path == "/push/bob"]
        assert len(tries) == 4
        gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
        # 0.2 s doubling, each with jitter of 0.5 to 1: [0.1, 0.2], [0.2, 0.4], [0.4, 0.8].
        assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39, gaps
        assert gaps[0] <= gaps[1] <= gaps[2], gaps
        stats = server.services.push.sender.stats
        await _until(_async(lambda: stats.sent["webpush"] == 1))
        assert stats.retried == 3


async def test_too_many_requests_honours_retry_after(nursery: trio.Nursery,
                                                     start_server: ServerFactory) -> None:
    _server, http = await _start(start_server)
    async with http, fake_push_server(nursery) as fake:
        alice, bob = await new_account(http), await new_account(http)
        await _subscribe(bob, fake, "bob")
        fake.scripts["/push/bob"] = Script(statuses=[429], retry_after="1")
        conversation = await alice.direct_with(bob)
        await _send(alice, conversation, "slow down")
        await fake.wait_for(1, "/push/bob")
        first, second = [item.at for item in fake.received if item.path == "/push/bob"]
        assert second - first >= 0.95


async def test_a_hanging_push_service_delays_only_its_own(nursery: trio.Nursery,
                                                          start_server: ServerFactory) -> None:
    server, http = await _start(start_server, timeout_s=30.0, per_origin_concurrency=2)
    async with http, fake_push_server(nursery) as stuck, \
            fake_push_server(nursery) as healthy:
        alice = await new_account(http)
        stuck_users = [await new_account(http) for _ in range(4)]
        for index, user in enumerate(stuck_users):
            stuck.scripts[f"/push/u{index}"] = Script(hang=True)
            await _subscribe(user, stuck, f"u{index}")
        carol = await new_account(http)
        await _subscribe(carol, healthy, "carol")
        for user in stuck_users:
            await _send(alice, await alice.direct_with(user), "into the void")
        await _until(_async(lambda: len(stuck.received) >= 2))
        # Both of its slots hang now; the others wait behind them, not carol's.
        start = trio.current_time()
        await _send(alice, await alice.direct_with(carol), "hi carol")
        [push] = await healthy.wait_for(1, "/push/carol")
        assert push.at - start < 1.0
        assert len(stuck.received) == 2  # per_origin_concurrency
        # Carol's is done; the four hanging ones are still there (two waiting).
        await _until(_async(lambda: server.services.push.sender.queued == 4))


async def test_gateway_push_and_rejected_pushkey(nursery: trio.Nursery,
                                                 start_server: ServerFactory) -> None:
    _server, http = await _start(start_server)
    async with http, fake_push_server(nursery, "gateway") as gateway:
        alice, bob = await new_account(http), await new_account(http)
        url = f"{gateway.origin}/_matrix/push/v1/notify"
        subscribed = await bob.post("/push/subscriptions", {
            "kind": "http", "url": url, "pushkey": "apns-token-1", "app_id": "org.chat.ios"})
        assert subscribed.status_code == 201, subscribed.text
        listed = (await bob.get("/push/subscriptions")).json()["subscriptions"]
        assert listed == [{"subscription_id": subscribed.json()["subscription_id"],
                           "kind": "http", "device_id": bob.device_id,
                           "created_at": listed[0]["created_at"], "target": url,
                           "app_id": "org.chat.ios"}]
        conversation = await alice.direct_with(bob)
        sent = await _send(alice, conversation, "via the gateway")
        [push] = await gateway.wait_for(1, "/_matrix/push/v1/notify")
        assert push.payload == {"notification": {
            "conversation_id": conversation, "seq": sent, "unread": 1,
            "prio": "high", "devices": [{"app_id": "org.chat.ios",
                                         "pushkey": "apns-token-1"}]}}
        gateway.scripts["/_matrix/push/v1/notify"] = Script(rejected=["apns-token-1"])
        await trio.sleep(PUSH["coalesce_s"])
        await _send(alice, conversation, "again")
        await gateway.wait_for(2, "/_matrix/push/v1/notify")
        await _until(lambda: _no_subscriptions(bob))


async def test_subscriptions_belong_to_their_device_and_account(
        nursery: trio.Nursery, start_server: ServerFactory) -> None:
    _server, http = await _start(start_server)
    async with http, fake_push_server(nursery) as fake:
        bob, eve = await new_account(http), await new_account(http)
        laptop = await login(http, bob.handle, "laptop")
        phone_sub = await _subscribe(bob, fake, "phone")
        laptop_sub = await _subscribe(laptop, fake, "laptop")
        # The same endpoint again is the same subscription.
        again = await bob.post("/push/subscriptions",
                               fake.subscriptions["/push/phone"].body())
        assert again.json()["subscription_id"] == phone_sub
        listed = (await laptop.get("/push/subscriptions")).json()["subscriptions"]
        assert {item["subscription_id"] for item in listed} == {phone_sub, laptop_sub}
        assert all("keys" not in item and "auth" not in json.dumps(item) for item in listed)
        # Another account sees none of them and cannot delete them.
        assert (await eve.get("/push/subscriptions")).json()["subscriptions"] == []
        assert_error(await eve.delete(f"/push/subscriptions/{phone_sub}"), 404,
                     "unknown_subscription")
        # Logging out the laptop removes its subscription.
        assert (await laptop.post("/logout")).status_code == 204
        async def one_left() -> bool:
            return len((await bob.get("/push/subscriptions")).json()["subscriptions"]) == 1

        await _until(one_left)
        assert (await bob.delete(f"/push/subscriptions/{phone_sub}")).status_code == 204
        assert_error(await bob.delete(f"/push/subscriptions/{phone_sub}"), 404)
        assert (await bob.get("/push/subscriptions")).json()["subscriptions"] == []


async def test_subscribe_refuses_bad_input(nursery: trio.Nursery,
                                           start_server: ServerFactory) -> None:
    _server, http = await _start(start_server, max_subscriptions_per_user=2)
    async with http, fake_push_server(nursery) as fake:
        bob = await new_account(http)
        good = fake.subscription("bob").body()
        bad_bodies: list[Any] = [
            {"kind": "webpush", "endpoint": good["endpoint"]},
            {"kind": "webpush", "keys": good["keys"]},
            {"kind": "http", "url": "https://gateway.example/notify", "pushkey": "k"},
            {"kind": "carrier-pigeon", "endpoint": good["endpoint"], "keys": good["keys"]},
            {**good, "keys": {"p256dh": "A" * 87, "auth": good["keys"]["auth"]}},
            {**good, "keys": {"p256dh": good["keys"]["p256dh"], "auth": "short"}},
            {**good, "endpoint": "ftp://127.0.0.1/x"},
            {**good, "endpoint": 12},
            {**good, "endpoint": "https://" + "x" * 3000},
            {**good, "endpoint": "https://bücher.example/x"},
            {**good, "endpoint": "https://d\x91n/x"},
            {**good, "endpoint": "https://push.example/a b"},
            [good], "webpush", None,
        ]
        for body in bad_bodies:
            assert_error(await bob.post("/push/subscriptions", body), 400)
        assert_error(await http.post("/push/subscriptions", json=good), 401)
        malformed = await http.post("/push/subscriptions", content=b'{"kind": ',
                                    headers={**bob.headers,
                                             "content-type": "application/json"})
        assert_error(malformed, 400)
        assert (await bob.post("/push/subscriptions", good)).status_code == 201
        assert (await bob.post("/push/subscriptions",
                               fake.subscription("two").body())).status_code == 201
        assert_error(await bob.post("/push/subscriptions", fake.subscription("three").body()),
                     409, "too_many_subscriptions")
        assert_error(await bob.delete("/push/subscriptions/not-an-id"), 400)


async def test_private_endpoints_are_refused(http: httpx.AsyncClient) -> None:
    """Without push.allow_private_endpoints (the default)."""
    bob = await new_account(http)
    keys = {"p256dh": "BIKfdZR2ftAm_SPLuRSxXcSUYC3P3RAjNKtySDgTlzXbKYRzRVgJZ4b430UMO8tSk1Bew"
                      "KyWw3B3jlhGmpHMLHA", "auth": "AAAAAAAAAAAAAAAAAAAAAA"}
    for endpoint in ("https://127.0.0.1/push", "https://localhost/push",
                     "https://10.1.2.3/push", "https://192.168.0.10:8443/push",
                     "https://169.254.169.254/latest", "https://[::1]/push",
                     "https://[::ffff:127.0.0.1]/push", "https://[fe80::1]/push",
                     "https://0.0.0.0/push", "https://224.0.0.1/push",
                     "https://[64:ff9b::a00:1]/push", "https://100.64.0.1/push",
                     "http://93.184.216.34/push", "https://user:pw@93.184.216.34/push",
                     "https://name.invalid/push", "https://a..b/push",
                     "https://xn--a.example/push"):
        response = await bob.post("/push/subscriptions",
                                  {"kind": "webpush", "endpoint": endpoint, "keys": keys})
        assert_error(response, 400, "endpoint_refused")
        assert "secret" not in response.text
    gateway = await bob.post("/push/subscriptions", {
        "kind": "http", "url": "https://127.0.0.1:8443/notify", "pushkey": "k",
        "app_id": "a"})
    assert_error(gateway, 400, "endpoint_refused")
    # A public address is accepted (a literal: no DNS is needed).
    accepted = await bob.post("/push/subscriptions", {
        "kind": "webpush", "endpoint": "https://93.184.216.34/push/x", "keys": keys})
    assert accepted.status_code == 201, accepted.text


async def test_the_guard_holds_at_send_time(nursery: trio.Nursery,
                                            start_server: ServerFactory) -> None:
    """A subscription whose host resolves to a private address by the time of the push
    (stored here directly: a name that was public when it was checked) gets nothing."""
    server = await start_server(push={"grace_s": 0.0},
                                ratelimits={"messages_per_account": "1000/1s burst 1000"})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http, \
            fake_push_server(nursery) as fake:
        alice, bob = await new_account(http), await new_account(http)
        sub = fake.subscription("bob")
        await server.services.push.subscriptions.subscribe(
            int(bob.user_id), int(bob.device_id),
            {"kind": "webpush", "endpoint": sub.endpoint.replace("http:", "https:"),
             "p256dh": sub.p256dh, "auth": sub.body()["keys"]["auth"]})
        conversation = await alice.direct_with(bob)
        await _send(alice, conversation, "to loopback?")
        stats = server.services.push.sender.stats
        await _until(_async(lambda: stats.failed["webpush"] > 0))
        assert fake.received == [] and stats.retried == 0


async def test_export_lists_and_erase_removes(nursery: trio.Nursery,
                                              start_server: ServerFactory) -> None:
    server, http = await _start(start_server)
    async with http, fake_push_server(nursery) as fake:
        alice, bob = await new_account(http), await new_account(http)
        sub_id = await _subscribe(bob, fake, "bob")
        conversation = await alice.direct_with(bob)
        await bob.patch(f"/conversations/{conversation}/notifications",
                        {"muted_until": 10**15})
        asked = await bob.post("/me/export")
        assert asked.status_code == 202, asked.text
        export_id = asked.json()["export_id"]
        async def ready() -> bool:
            return (await bob.get(f"/me/export/{export_id}")).status_code != 202

        await _until(ready, 10)
        got = await bob.get(f"/me/export/{export_id}")
        assert got.status_code == 200, got.text
        with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
            document = json.loads(archive.read("notifications.json"))
            assert "notifications.json" in json.loads(archive.read("export.json"))["files"]
        assert document["previews"] is False
        assert document["muted"] == [{"conversation_id": conversation,
                                      "muted_until": 10**15}]
        [listed] = document["push_subscriptions"]
        assert listed["subscription_id"] == sub_id and listed["kind"] == "webpush"
        assert listed["endpoint"] == fake.subscriptions["/push/bob"].endpoint
        assert "auth" not in listed and "p256dh" not in listed
        erased = await bob.http.request("DELETE", "/me", headers=bob.headers,
                                        json={"password": PASSWORD, "erase": True})
        assert erased.status_code in (200, 202), erased.text
        user_id = int(bob.user_id)
        await _until(_async(lambda: not server.services.push.subscriptions.of(user_id)), 10)
        assert server.services.notify_prefs.mutes_of(user_id) == {}


async def test_metrics_count_pushes(nursery: trio.Nursery,
                                    start_server: ServerFactory) -> None:
    server = await start_server(push=PUSH, server={"admin_token": "t" * 32})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http, \
            fake_push_server(nursery) as fake:
        alice, bob = await new_account(http), await new_account(http)
        await _subscribe(bob, fake, "bob")
        await _send(alice, await alice.direct_with(bob), "count me")
        await fake.wait_for(1, "/push/bob")
        text = ""
        with trio.fail_after(5):
            while 'chatd_push_sent_total{kind="webpush"} 1' not in text:
                text = (await http.get("/metrics", headers={
                    "authorization": f"Bearer {'t' * 32}"})).text
        assert "chatd_push_dropped_total 0" in text
        assert 'chatd_push_failed_total{kind="webpush"} 0' in text


async def test_the_queue_is_bounded(nursery: trio.Nursery,
                                    start_server: ServerFactory) -> None:
    """Past push.queue_size pushes waiting, in flight or retrying, new ones are dropped
    and counted, not queued without end."""
    server, http = await _start(start_server, timeout_s=30.0, per_origin_concurrency=1,
                                queue_size=2)
    async with http, fake_push_server(nursery) as stuck:
        alice = await new_account(http)
        users = [await new_account(http) for _ in range(4)]
        for index, user in enumerate(users):
            stuck.scripts[f"/push/u{index}"] = Script(hang=True)
            await _subscribe(user, stuck, f"u{index}")
        for user in users:
            await _send(alice, await alice.direct_with(user), "into the void")
        sender = server.services.push.sender
        await _until(_async(lambda: sender.stats.dropped == 2))
        assert sender.queued == 2 and len(stuck.received) == 1
