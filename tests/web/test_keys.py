"""The key directory over a real server (one shard): /keys/upload, /keys/query,
/keys/claim with real vodozemac keys, their ugly inputs, concurrent claims, `keys_low`
and `device_list` events, 409 device_list_stale on sends, and erasure."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import trio
import vodozemac

from chatd.client import ApiError, ChatClient, LiveConnection
from chatd.protocol import frames
from chatd.storage import Batch, records
from tests.conftest import ServerFactory
from tests.e2e_devices import KeyDevice, signed_by
from tests.helpers import (
    PASSWORD,
    Account,
    ManualClock,
    assert_error,
    live,
    login,
    new_account,
    next_of,
)
from tests.web.test_gdpr import document, exported


async def upload(account: Account, body: dict[str, Any]) -> httpx.Response:
    return await account.post("/keys/upload", body)


async def uploaded(account: Account, device: KeyDevice, one_time: int = 0,
                   fallback: bool = False) -> int:
    response = await upload(account, device.upload(one_time, fallback))
    assert response.status_code == 200, response.text
    count: int = response.json()["one_time_key_count"]
    return count


async def query(account: Account, *users: Account | str) -> dict[str, Any]:
    response = await account.post("/keys/query", {"user_ids": [
        user if isinstance(user, str) else user.user_id for user in users]})
    assert response.status_code == 200, response.text
    return {user["user_id"]: user for user in response.json()["users"]}


async def claim(account: Account, *devices: tuple[str, str]) -> dict[str, Any]:
    response = await account.post("/keys/claim", {"devices": [
        {"user_id": user, "device_id": device} for user, device in devices]})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def pending_events(connection: LiveConnection) -> list[dict[str, Any]]:
    """Events the connection received and nobody read yet."""
    events = []
    while True:
        try:
            events.append(connection._events_out.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


async def settle(connection: LiveConnection) -> None:
    """A round trip on `connection`: whatever the server sent it before is in."""
    await connection.ping()


async def test_upload_query_claim_round_trip(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        device = KeyDevice()
        body = device.upload(one_time=5, fallback=True)
        response = await upload(alice, body)
        assert response.status_code == 200, response.text
        assert response.json() == {"one_time_key_count": 5}
        # The same upload again (a retry) stores nothing new.
        assert (await upload(alice, body)).json() == {"one_time_key_count": 5}

        found = (await query(bob, alice))[alice.user_id]
        assert found["version"] == 1
        assert found["devices"] == [{"device_id": alice.device_id, **device.identity(),
                                     "sealed_key": None}]

        claimed = await claim(bob, (alice.user_id, alice.device_id))
        assert claimed["missing"] == []
        [key] = claimed["keys"]
        assert (key["user_id"], key["device_id"], key["fallback"]) == (
            alice.user_id, alice.device_id, False)
        assert body["one_time_keys"][key["key_id"]]["key"] == key["key"]
        assert signed_by(device.ed25519, key["key"], key["signature"])
        # The key works: Bob opens an Olm session to it, Alice reads his pre-key message.
        bob_device = KeyDevice()
        outbound = bob_device.account.create_outbound_session(
            vodozemac.Curve25519PublicKey.from_base64(device.curve25519),
            vodozemac.Curve25519PublicKey.from_base64(key["key"]))
        message_type, ciphertext = outbound.encrypt(b"hello alice").to_parts()
        prekey = vodozemac.AnyOlmMessage.from_parts(message_type, ciphertext).to_pre_key()
        _, plaintext = device.account.create_inbound_session(
            bob_device.account.curve25519_key, prekey)
        assert plaintext == b"hello alice"
        # Four left; each claim takes another.
        seen = {key["key_id"]}
        for _ in range(4):
            [key] = (await claim(bob, (alice.user_id, alice.device_id)))["keys"]
            assert not key["fallback"] and key["key_id"] not in seen
            seen.add(key["key_id"])
        assert seen == set(body["one_time_keys"])
        [fallback] = (await claim(bob, (alice.user_id, alice.device_id)))["keys"]
        [(fallback_id, fallback_key)] = body["fallback_key"].items()
        assert fallback == {"user_id": alice.user_id, "device_id": alice.device_id,
                            "key_id": fallback_id, **fallback_key, "fallback": True}
        # The fallback key is given again (it is not consumed) until a new one comes.
        assert (await claim(bob, (alice.user_id, alice.device_id)))["keys"] == [fallback]
        new_fallback = device.fallback_key()
        response = await upload(alice, {"identity": device.identity(),
                                        "fallback_key": new_fallback})
        assert response.json() == {"one_time_key_count": 0}
        [again] = (await claim(bob, (alice.user_id, alice.device_id)))["keys"]
        assert again["key_id"] in new_fallback and again["fallback"]


async def test_bad_signatures_are_refused_and_store_nothing(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        device, other = KeyDevice(), KeyDevice()
        # An identity signed by another key.
        identity = {**device.identity(), "signature": other.sign(device.curve25519)}
        assert_error(await upload(alice, {"identity": identity}), 400, "bad_signature")
        # A signature of the raw key bytes instead of its base64 text.
        raw = base64.b64decode(device.curve25519 + "=")
        identity = {**device.identity(),
                    "signature": device.account.sign(raw).to_base64()}
        assert_error(await upload(alice, {"identity": identity}), 400, "bad_signature")
        # One bad one-time key among good ones: none is stored.
        body = device.upload(one_time=3)
        key_id = next(iter(body["one_time_keys"]))
        body["one_time_keys"][key_id]["signature"] = other.sign(
            body["one_time_keys"][key_id]["key"])
        assert_error(await upload(alice, body), 400, "bad_signature")
        body = device.upload(fallback=True)
        [entry] = body["fallback_key"].values()
        entry["signature"] = device.sign(device.curve25519)  # another key's signature
        assert_error(await upload(alice, body), 400, "bad_signature")
        users = await query(alice, alice)
        assert users[alice.user_id] == {"user_id": alice.user_id, "version": 0, "devices": []}


async def test_identity_is_fixed_per_device(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        first = KeyDevice()
        await uploaded(alice, first, one_time=2)
        assert_error(await upload(alice, KeyDevice().upload(one_time=2)), 409,
                     "identity_changed")
        # The same curve25519 key with another ed25519 key is another identity too.
        swapped = KeyDevice()
        changed = {"curve25519": first.curve25519, "ed25519": swapped.ed25519,
                   "signature": swapped.sign(first.curve25519)}
        assert_error(await upload(alice, {"identity": changed}), 409, "identity_changed")
        found = (await query(alice, alice))[alice.user_id]
        assert found["version"] == 1
        assert found["devices"] == [{"device_id": alice.device_id, **first.identity(),
                                     "sealed_key": None}]
        # A second device of the same user has its own identity: the version moves.
        second_login = await login(http, alice.handle, "phone")
        await uploaded(second_login, KeyDevice())
        found = (await query(alice, alice))[alice.user_id]
        assert found["version"] == 2
        assert {item["device_id"] for item in found["devices"]} == {
            alice.device_id, second_login.device_id}


async def test_one_time_keys_are_capped_at_100(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        device = KeyDevice()
        assert_error(await upload(alice, device.upload(one_time=101)), 400, "invalid_field")
        first = device.upload(one_time=60)
        assert (await upload(alice, first)).json() == {"one_time_key_count": 60}
        assert_error(await upload(alice, device.upload(one_time=41)), 400, "too_many_keys")
        assert await uploaded(alice, device, one_time=40) == 100
        assert_error(await upload(alice, device.upload(one_time=1)), 400, "too_many_keys")
        # A key id the device holds, with another key: refused, not replaced.
        held = device.upload(one_time=1)
        held["one_time_keys"] = {next(iter(first["one_time_keys"])):
                                 next(iter(held["one_time_keys"].values()))}
        assert_error(await upload(alice, held), 409, "key_id_reused")


async def test_wrong_types_and_malformed_bodies(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        device = KeyDevice()
        good = device.upload(one_time=1, fallback=True)
        [(key_id, key)] = good["one_time_keys"].items()
        bad_bodies: list[Any] = [
            {}, [], "keys", {"identity": None}, {"identity": "x"},
            {"identity": {**device.identity(), "curve25519": 5}},
            {"identity": {**device.identity(), "curve25519": device.curve25519 + "="}},
            {"identity": {**device.identity(), "ed25519": "!" * 43}},
            {"identity": {**device.identity(), "signature": "A" * 85}},
            {**good, "one_time_keys": [key]},
            {**good, "one_time_keys": {key_id: "x"}},
            {**good, "one_time_keys": {key_id: {"key": key["key"]}}},
            {**good, "one_time_keys": {"": key}},
            {**good, "one_time_keys": {"a b": key}},
            {**good, "one_time_keys": {"x" * 65: key}},
            {**good, "fallback_key": {}},
            {**good, "fallback_key": {**good["fallback_key"], "second": key}},
            {**good, "fallback_key": [key]},
        ]
        for body in bad_bodies:
            response = await upload(alice, body)
            assert response.status_code == 400, (bad_bodies.index(body), response.text)
        response = await alice.http.post("/keys/upload", content=b"{not json",
                                          headers={**alice.headers,
                                                   "content-type": "application/json"})
        assert_error(response, 400)
        for path, body in (("/keys/query", {"user_ids": "1"}),
                           ("/keys/query", {"user_ids": []}),
                           ("/keys/query", {"user_ids": [1]}),
                           ("/keys/query", {"user_ids": ["0"]}),
                           ("/keys/claim", {"devices": {}}),
                           ("/keys/claim", {"devices": [{"user_id": alice.user_id}]}),
                           ("/keys/claim", {"devices": [[alice.user_id, alice.device_id]]}),
                           ("/keys/claim", {"devices": [{"user_id": "x",
                                                         "device_id": alice.device_id}]})):
            response = await alice.post(path, body)
            assert response.status_code == 400, (path, body, response.text)
        # Without a token: 401, whatever the body.
        for path in ("/keys/upload", "/keys/query", "/keys/claim"):
            assert_error(await http.post(path, json={}), 401)
        # Nothing was stored by any of it.
        assert (await query(alice, alice))[alice.user_id]["devices"] == []


async def test_unknown_users_and_devices_and_another_users_device(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob, carol = (await new_account(http), await new_account(http),
                             await new_account(http))
        await uploaded(alice, KeyDevice(), one_time=3)
        await uploaded(bob, KeyDevice(), one_time=3)
        unknown_user = str(int(alice.user_id) + 7)
        assert_error(await carol.post("/keys/query", {"user_ids": [unknown_user]}), 404,
                     "unknown_user")
        assert_error(await carol.post("/keys/query", {"user_ids": [alice.user_id,
                                                                   unknown_user]}),
                     404, "unknown_user")
        claimed = await claim(
            carol,
            (unknown_user, alice.device_id),          # no such user
            (alice.user_id, str(int(alice.device_id) + 3)),  # no such device
            (alice.user_id, bob.device_id),           # Bob's device, named as Alice's
            (carol.user_id, carol.device_id))         # a device with no keys
        assert claimed["keys"] == []
        assert claimed["missing"] == [
            {"user_id": unknown_user, "device_id": alice.device_id},
            {"user_id": alice.user_id, "device_id": str(int(alice.device_id) + 3)},
            {"user_id": alice.user_id, "device_id": bob.device_id},
            {"user_id": carol.user_id, "device_id": carol.device_id}]
        # Bob's keys were not touched by the claim that named his device as Alice's.
        assert server.services.key_directory.one_time_key_count(
            int(bob.user_id), int(bob.device_id)) == 3
        # A device named twice gets one key.
        claimed = await claim(carol, (alice.user_id, alice.device_id),
                              (alice.user_id, alice.device_id))
        assert len(claimed["keys"]) == 1
        assert server.services.key_directory.one_time_key_count(
            int(alice.user_id), int(alice.device_id)) == 2


async def test_concurrent_claimers_never_share_a_key(start_server: ServerFactory) -> None:
    """50 claimers at once for a device with 10 one-time keys: 10 distinct one-time keys,
    then the fallback key for the 40 others."""
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                 limits=httpx.Limits(max_connections=60)) as http:
        alice = await new_account(http)
        device = KeyDevice()
        body = device.upload(one_time=10, fallback=True)
        assert (await upload(alice, body)).json() == {"one_time_key_count": 10}
        claimers = [await new_account(http) for _ in range(5)]
        results: list[dict[str, Any]] = []

        async def claim_one(claimer: Account) -> None:
            [key] = (await claim(claimer, (alice.user_id, alice.device_id)))["keys"]
            results.append(key)

        async with trio.open_nursery() as nursery:
            for index in range(50):
                nursery.start_soon(claim_one, claimers[index % len(claimers)])
        one_time = [key for key in results if not key["fallback"]]
        fallback = [key for key in results if key["fallback"]]
        assert len(results) == 50
        assert len(one_time) == 10
        assert {key["key_id"] for key in one_time} == set(body["one_time_keys"])
        assert len(fallback) == 40
        assert {key["key_id"] for key in fallback} == set(body["fallback_key"])
        assert server.services.key_directory.one_time_key_count(
            int(alice.user_id), int(alice.device_id)) == 0


async def test_claims_are_rate_limited(start_server: ServerFactory) -> None:
    server = await start_server(ratelimits={"keys_claim_per_account": "2/1h burst 2"})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        await uploaded(alice, KeyDevice(), one_time=5)
        for _ in range(2):
            await claim(bob, (alice.user_id, alice.device_id))
        response = await bob.post("/keys/claim", {"devices": [
            {"user_id": alice.user_id, "device_id": alice.device_id}]})
        assert_error(response, 429, "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1
        # The refused claim took nothing.
        assert server.services.key_directory.one_time_key_count(
            int(alice.user_id), int(alice.device_id)) == 3


async def test_keys_low_reaches_only_the_device(start_server: ServerFactory) -> None:
    # One claimer (bob) drains the device here: its share covers every key.
    server = await start_server(keys={"low_threshold": 3, "claims_per_claimer": 10})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        phone = await login(http, alice.handle, "phone")
        await uploaded(alice, KeyDevice(), one_time=5, fallback=True)
        async with live(server.url, alice) as laptop_socket, \
                live(server.url, phone) as phone_socket:
            await claim(bob, (alice.user_id, alice.device_id))  # 4 left: nothing said
            await claim(bob, (alice.user_id, alice.device_id))  # 3 left: nothing said
            await settle(laptop_socket)
            assert [event for event in pending_events(laptop_socket)
                    if event["type"] == "keys_low"] == []
            await claim(bob, (alice.user_id, alice.device_id))  # 2 left
            assert await next_of(laptop_socket, "keys_low") == {
                "type": "keys_low", "one_time_key_count": 2, "fallback_used": False}
            for left in (1, 0):
                await claim(bob, (alice.user_id, alice.device_id))
                assert (await next_of(laptop_socket, "keys_low"))[
                    "one_time_key_count"] == left
            [key] = (await claim(bob, (alice.user_id, alice.device_id)))["keys"]
            assert key["fallback"]
            assert await next_of(laptop_socket, "keys_low") == {
                "type": "keys_low", "one_time_key_count": 0, "fallback_used": True}
            # The same user's other device was told nothing.
            await settle(phone_socket)
            assert [event for event in pending_events(phone_socket)
                    if event["type"] == "keys_low"] == []


async def test_device_list_events_and_revocation(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob, stranger = (await new_account(http), await new_account(http),
                                await new_account(http))
        await alice.direct_with(bob)
        # Someone in a chat with Alice whom she blocks hears nothing, as of her presence.
        blocked = await new_account(http)
        await blocked.direct_with(alice)
        assert (await alice.post(f"/blocks/{blocked.user_id}")).status_code == 204
        async with live(server.url, bob) as bob_socket, \
                live(server.url, stranger) as stranger_socket, \
                live(server.url, blocked) as blocked_socket, \
                live(server.url, alice) as alice_socket:
            await uploaded(alice, KeyDevice(), one_time=2)
            expected = {"type": "device_list", "user_id": alice.user_id, "version": 1}
            assert await next_of(bob_socket, "device_list") == expected
            assert await next_of(alice_socket, "device_list") == expected
            # A new device that publishes no keys is no change to the device list.
            phone = await login(http, alice.handle, "phone")
            await uploaded(phone, KeyDevice(), one_time=2, fallback=True)
            assert (await next_of(bob_socket, "device_list"))["version"] == 2
            # Revoking a device with keys: its keys go, the version moves.
            response = await alice.delete(f"/devices/{phone.device_id}")
            assert response.status_code == 204, response.text
            assert (await next_of(bob_socket, "device_list"))["version"] == 3
            found = (await query(bob, alice))[alice.user_id]
            assert found["version"] == 3
            assert [item["device_id"] for item in found["devices"]] == [alice.device_id]
            assert (await claim(bob, (alice.user_id, phone.device_id)))["missing"] == [
                {"user_id": alice.user_id, "device_id": phone.device_id}]
            directory = server.services.key_directory
            assert directory.one_time_key_count(int(alice.user_id), int(phone.device_id)) == 0
            store = server.services.store
            assert store.get(records.FALLBACK_KEYS,
                             (int(alice.user_id), int(phone.device_id))) is None
            # Logging out works the same way.
            tablet = await login(http, alice.handle, "tablet")
            await uploaded(tablet, KeyDevice())
            assert (await next_of(bob_socket, "device_list"))["version"] == 4
            assert (await tablet.post("/logout")).status_code == 204
            assert (await next_of(bob_socket, "device_list"))["version"] == 5
            # Someone who shares no conversation with Alice heard none of it, nor did
            # the user she blocks.
            for socket in (stranger_socket, blocked_socket):
                await settle(socket)
                assert [event for event in pending_events(socket)
                        if event["type"] == "device_list"] == []


async def test_stale_device_list_refuses_the_send(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob, carol = (await new_account(http), await new_account(http),
                             await new_account(http))
        conversation = await alice.direct_with(bob)
        await uploaded(bob, KeyDevice(), one_time=1)
        versions = {user: found["version"]
                    for user, found in (await query(alice, bob, carol)).items()}
        assert versions == {bob.user_id: 1, carol.user_id: 0}

        def send(text: str, known: dict[str, int] | None) -> dict[str, Any]:
            body: dict[str, Any] = {"conversation_id": conversation, "client_msg_id": text,
                                    "content_type": "text/plain", "body": text}
            if known is not None:
                body["device_list_version"] = known
            return body

        response = await alice.post("/messages/send", send("fresh", versions))
        assert response.status_code == 201, response.text
        # Bob adds a device: Alice's versions are stale now.
        bob_phone = await login(http, bob.handle, "phone")
        await uploaded(bob_phone, KeyDevice())
        response = await alice.post("/messages/send", send("stale", versions))
        assert_error(response, 409, "device_list_stale")
        assert response.json()["error"]["users"] == [bob.user_id]
        # Nothing was written; a send without versions pays no check and goes through.
        history = (await alice.get(f"/messages/{conversation}")).json()["messages"]
        assert [message["body"] for message in history] == ["fresh"]
        response = await alice.post("/messages/send", send("plain", None))
        assert response.status_code == 201, response.text
        # Ugly versions: wrong types are 400.
        for known in ({bob.user_id: "1"}, {bob.user_id: -1}, {"bob": 1}, [bob.user_id],
                      {bob.user_id: True}, {bob.user_id: 1.5}):
            response = await alice.post("/messages/send", send("ugly", known))  # type: ignore[arg-type]
            assert response.status_code == 400, (known, response.text)

        # The WebSocket send: an error frame naming the users.
        async with ChatClient(server.url, token=alice.token) as client, \
                client.connect() as connection:
            try:
                await connection.send(conversation, "ws stale",
                                      device_list_version=versions)
            except ApiError as error:
                assert (error.code, error.details["users"]) == (
                    "device_list_stale", [bob.user_id])
            else:
                raise AssertionError("a stale device list was accepted")
            current = {bob.user_id: 2, carol.user_id: 0}
            sent = await connection.send(conversation, "ws fresh",
                                         device_list_version=current)
            assert sent["type"] == "sent"
            bad = frames.send_request("r1", conversation, "ws-bad", "x")
            bad["device_list_version"] = {bob.user_id: "2"}
            await connection.send_frame(bad)
            refused = await next_of(connection, "error")
            assert (refused["req"], refused["code"]) == ("r1", "invalid_field")
        # The client's REST send carries them too.
        async with ChatClient(server.url, token=alice.token) as client:
            try:
                await client.send(conversation, "client stale", device_list_version=versions)
            except ApiError as error:
                assert error.status == 409 and error.details["users"] == [bob.user_id]
            else:
                raise AssertionError("a stale device list was accepted")


async def test_erasure_deletes_every_key(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        phone = await login(http, alice.handle, "phone")
        await uploaded(alice, KeyDevice(), one_time=4, fallback=True)
        await uploaded(phone, KeyDevice(), one_time=4, fallback=True)
        response = await alice.http.request("DELETE", "/me", headers=alice.headers,
                                            json={"password": PASSWORD, "erase": True})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "erased"
        store = server.services.store
        prefix = records.u64(int(alice.user_id))
        for family in (records.IDENTITY_KEYS, records.ONE_TIME_KEYS, records.FALLBACK_KEYS):
            assert store.scan(family, prefix) == [], family.name
        assert store.get(records.DEVICE_LISTS, int(alice.user_id)) is None


async def test_the_export_lists_public_identity_keys(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        phone = await login(http, alice.handle, "phone")
        device = KeyDevice()
        await uploaded(alice, device, one_time=3, fallback=True)
        devices = {entry["device_id"]: entry
                   for entry in document(await exported(alice), "devices.json")}
        keys = devices[alice.device_id]["identity_keys"]
        assert (keys["curve25519"], keys["ed25519"]) == (device.curve25519, device.ed25519)
        assert "identity_keys" not in devices[phone.device_id]  # it published none


async def test_uploads_take_the_messages_bucket(start_server: ServerFactory) -> None:
    server = await start_server(ratelimits={"messages_per_account": "2/1h burst 2"})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        device = KeyDevice()
        await uploaded(alice, device, one_time=1)
        await uploaded(alice, device, one_time=1)
        response = await upload(alice, device.upload(one_time=1))
        assert_error(response, 429, "rate_limited")
        assert server.services.key_directory.one_time_key_count(
            int(alice.user_id), int(alice.device_id)) == 2


async def test_one_claimer_cannot_drain_a_device(start_server: ServerFactory) -> None:
    """A stranger claiming again and again gets `keys.claims_per_claimer` one-time keys,
    then the fallback key; another claimer still gets one-time keys; the share comes
    back after `keys.claim_window`."""
    clock = ManualClock()
    server = await start_server(clock=clock, keys={"claims_per_claimer": 3,
                                                   "claim_window": 60.0})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        device = KeyDevice()
        body = device.upload(one_time=10, fallback=True)
        assert (await upload(alice, body)).json() == {"one_time_key_count": 10}
        stranger = await new_account(http)
        friend = await new_account(http)
        target = (alice.user_id, alice.device_id)
        got = [(await claim(stranger, target))["keys"][0] for _ in range(6)]
        assert [key["fallback"] for key in got] == [False] * 3 + [True] * 3
        assert {key["key_id"] for key in got[3:]} == set(body["fallback_key"])
        assert len({key["key_id"] for key in got[:3]}) == 3
        count = server.services.key_directory.one_time_key_count
        assert count(int(alice.user_id), int(alice.device_id)) == 7
        [key] = (await claim(friend, target))["keys"]
        assert not key["fallback"] and key["key_id"] in body["one_time_keys"]
        assert count(int(alice.user_id), int(alice.device_id)) == 6
        clock.now += 61_000
        [key] = (await claim(stranger, target))["keys"]
        assert not key["fallback"]
        assert count(int(alice.user_id), int(alice.device_id)) == 5


async def test_another_devices_identity_is_refused(start_server: ServerFactory) -> None:
    """The review's key substitution: Mallory republishes Alice's public identity (from
    /keys/query) as her own device's. The signature cannot tell (it covers only the
    curve25519 key's text), so the home refuses a key another device published."""
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, mallory = await new_account(http), await new_account(http)
        genuine = KeyDevice()
        await uploaded(alice, genuine, one_time=2, fallback=True)
        published = (await query(mallory, alice))[alice.user_id]["devices"][0]
        stolen = {k: published[k] for k in ("curve25519", "ed25519", "signature")}
        assert_error(await upload(mallory, {"identity": stolen}), 409, "identity_in_use")
        # The curve25519 key alone, signed by Mallory's own ed25519 key: refused too.
        own = KeyDevice()
        half = {"curve25519": genuine.curve25519, "ed25519": own.ed25519,
                "signature": own.sign(genuine.curve25519)}
        assert_error(await upload(mallory, {"identity": half}), 409, "identity_in_use")
        # Another device of Alice's own may not reuse it either.
        phone = await login(http, alice.handle, "phone")
        assert_error(await upload(phone, {"identity": stolen}), 409, "identity_in_use")
        # Nothing was stored: the keys are listed under Alice's device only, Mallory
        # has none (and so no sender certificate naming them).
        found = await query(mallory, alice, mallory)
        assert [d["device_id"] for d in found[alice.user_id]["devices"]] == [alice.device_id]
        assert found[mallory.user_id]["devices"] == []
        certificate = await mallory.get("/certificate/sender")
        assert certificate.status_code != 200 or certificate.json().get(
            "identity_key") != genuine.curve25519
        # The genuine device uploading again (more one-time keys) is not "another".
        await uploaded(alice, genuine, one_time=2)
        # Mallory's own keys are fine.
        await uploaded(mallory, own, one_time=1)


async def test_identity_keys_free_again_once_their_device_is_gone(
        start_server: ServerFactory) -> None:
    """The index of published keys follows revocation and erasure (a key of a device
    that is gone blocks nobody), and a home whose identity rows predate the index
    rebuilds it on the next upload."""
    server = await start_server()
    store = server.services.store
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, other = await new_account(http), await new_account(http)
        phone = await login(http, alice.handle, "phone")
        phone_keys = KeyDevice()
        await uploaded(phone, phone_keys)
        owner_key = "c:" + phone_keys.curve25519
        assert store.get(records.IDENTITY_OWNERS, owner_key) == (
            int(alice.user_id), int(phone.device_id))
        response = await alice.delete(f"/devices/{phone.device_id}")
        assert response.status_code == 204, response.text
        assert store.get(records.IDENTITY_OWNERS, owner_key) is None
        assert store.get(records.IDENTITY_OWNERS, "e:" + phone_keys.ed25519) is None
        await uploaded(other, phone_keys)  # the revoked device's keys are nobody's now

        # Erasure drops the rows too.
        alice_keys = KeyDevice()
        await uploaded(alice, alice_keys)
        response = await alice.http.request("DELETE", "/me", headers=alice.headers,
                                            json={"password": PASSWORD, "erase": True})
        assert response.status_code == 200, response.text
        assert store.get(records.IDENTITY_OWNERS, "c:" + alice_keys.curve25519) is None

        # A home from before the index: rows and flag gone, the identity rows kept.
        batch = Batch()
        for name, _owner in store.scan(records.IDENTITY_OWNERS, b""):
            batch.delete(records.IDENTITY_OWNERS, name)
        batch.delete(records.META, "identity_owners_built")
        store.write(batch)
        server.services.key_directory._index_built = False
        mallory = await new_account(http)
        stolen = (await query(mallory, other))[other.user_id]["devices"][0]
        assert_error(await upload(mallory, {"identity": {
            k: stolen[k] for k in ("curve25519", "ed25519", "signature")}}), 409,
            "identity_in_use")
        assert store.get(records.IDENTITY_OWNERS, owner_key) == (
            int(other.user_id), int(other.device_id))
