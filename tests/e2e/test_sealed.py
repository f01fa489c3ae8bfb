"""Sealed sender with real SDK devices over a real server: the envelope is boxed to the
recipient device's sealed-sender key (not its vodozemac identity key, whose private half
never leaves vodozemac), opened by the recipient's `E2EClient`, which checks the
certificate and reads the sender from it; the server keeps no sender id."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import nacl.public
import trio

from chatd.client import ApiError, ChatClient
from chatd.e2e import wire
from chatd.e2e.client import E2EClient, Undecryptable
from chatd.e2e.sealed import public_key_text
from chatd.server import RunningServer
from chatd.storage import records
from tests.conftest import ServerFactory
from tests.e2e.crypto_helpers import CHEAP
from tests.e2e.sdk_helpers import Decrypted, SdkUser, next_item, sdk_user
from tests.helpers import UNLIMITED_SENDS, assert_error, new_account
from tests.web.test_sealed_sender import DeviceKeys, unpadded

ACCESS_KEY = bytes(range(16))


def stored_rows(server: RunningServer, user: SdkUser) -> list[Any]:
    device = int(user.chat.credentials.device_id)  # type: ignore[union-attr]
    return [value for _, value in server.services.store.scan(
        records.TO_DEVICE, records.pair(int(user.user_id), device))]


async def next_sealed_frame(live: Any) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            event: dict[str, Any] = await live.next_event()
            if event.get("type") == "to_device" and \
                    event.get("message_type") == wire.TO_DEVICE_SEALED:
                return event


def device_of(user: SdkUser) -> str:
    return user.e2e.machine.device_id


async def test_sealed_message_delivered_with_the_sender_from_the_certificate(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob:
        # The directory holds bob's sealed-sender key, signed, and it is his state's.
        [answer] = await alice.chat.query_keys([bob.user_id])
        [published] = answer["devices"]
        assert published["sealed_key"]["key"] == public_key_text(bob.e2e.machine.sealed_key)
        assert published["sealed_key"]["key"] != published["curve25519"]
        await bob.chat.set_access_key(ACCESS_KEY)
        async with bob.chat.connect() as bob_live:
            await alice.e2e.sealed_send(bob.user_id, device_of(bob), {"text": "psst"},
                                        ACCESS_KEY)
            frame = await next_sealed_frame(bob_live)
            # No sender in the frame, nor in the stored record (before the ack).
            assert "sender_user_id" not in frame and "sender_device_id" not in frame
            [row] = stored_rows(server, bob)
            assert row[:3] == [0, 0, "sealed"]
            packed = records.pack(row)
            assert alice.user_id.encode() not in packed
            assert int(alice.user_id).to_bytes(8, "big") not in packed
            assert alice.e2e.machine.identity.curve25519.encode() not in packed
            [got] = await bob.e2e.handle(frame, bob_live)
            assert isinstance(got, Decrypted), got
            assert (got.content, got.sender_id, got.sender_device_id) == (
                {"text": "psst"}, alice.user_id, device_of(alice))
            # A second one rides the same Olm session (a normal message, not pre-key).
            await alice.e2e.sealed_send(bob.user_id, device_of(bob), {"text": "again"},
                                        ACCESS_KEY)
            again = await next_item(bob, bob_live, Decrypted)
            assert again.content == {"text": "again"}
        assert stored_rows(server, bob) == []  # acknowledged by the SDK, then deleted
        # Without the right access key the server refuses it; nothing is queued.
        try:
            await alice.e2e.sealed_send(bob.user_id, device_of(bob), {"text": "x"},
                                        b"w" * 16)
            raise AssertionError("sent with a wrong access key")
        except ApiError as refused:
            assert refused.status == 401
        assert stored_rows(server, bob) == []


async def rejected(server: RunningServer, sender: SdkUser, bob: SdkUser,
                   certificate: dict[str, Any] | None = None,
                   bob_now: int | None = None) -> Undecryptable:
    """A sealed send from `sender` (with `certificate` instead of its own if given), as
    bob's SDK makes of it: it must be an `Undecryptable`, not a crash or a message."""
    if certificate is not None:
        sender.e2e._certificate = certificate
    if bob_now is not None:
        bob.e2e.now_ms = lambda: bob_now
    async with bob.chat.connect() as bob_live:
        await sender.e2e.sealed_send(bob.user_id, device_of(bob), {"text": "forged"},
                                     ACCESS_KEY)
        frame = await next_sealed_frame(bob_live)
        items = await bob.e2e.handle(frame, bob_live)
    [item] = items
    assert isinstance(item, Undecryptable), item
    assert stored_rows(server, bob) == []  # acknowledged all the same
    return item


async def test_expired_forged_and_borrowed_certificates_are_rejected(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob, \
            sdk_user(server.url, tmp_path) as carol:
        await bob.chat.set_access_key(ACCESS_KEY)
        real_now = bob.e2e.now_ms
        # Expired: bob's clock is two days on (certificates live a day).
        expired = await rejected(server, alice, bob,
                                 bob_now=int(time.time() * 1000) + 2 * 86_400_000)
        assert "expired" in expired.reason
        bob.e2e.now_ms = real_now
        # A certificate for another identity: carol's, around alice's Olm message.
        borrowed = await rejected(server, alice, bob,
                                  certificate=await carol.chat.sender_certificate())
        assert "identity key" in borrowed.reason
        # A forged one: alice's certificate rewritten to name carol (signature kept).
        own = await alice.chat.sender_certificate()
        fields = json.loads(base64.b64decode(own["certificate"]))
        fields.update(user_id=carol.user_id, device_id=device_of(carol),
                      identity_key=carol.e2e.machine.identity.curve25519)
        forged = {**own, "certificate": base64.b64encode(json.dumps(
            fields, sort_keys=True, separators=(",", ":")).encode()).decode()}
        bad = await rejected(server, alice, bob, certificate=forged)
        assert "signature" in bad.reason
        # Alice's own certificate still works after all that.
        alice.e2e._certificate = None
        async with bob.chat.connect() as bob_live:
            await alice.e2e.sealed_send(bob.user_id, device_of(bob), {"text": "real"},
                                        ACCESS_KEY)
            got = await next_item(bob, bob_live, Decrypted)
        assert (got.content, got.sender_id) == ({"text": "real"}, alice.user_id)


async def test_sealed_key_upload_checks(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        account = await new_account(http)
        keys = DeviceKeys()
        sealed_key = unpadded(bytes(nacl.public.PrivateKey.generate().public_key))
        good = {"key": sealed_key,
                "signature": unpadded(keys.signing.sign(sealed_key.encode()).signature)}
        # Signed over another text: 400 bad_signature, and nothing stored.
        wrong = {"key": sealed_key, "signature": unpadded(
            keys.signing.sign(keys.curve25519.encode()).signature)}
        response = await http.post("/keys/upload", headers=account.headers, json={
            "identity": {**keys.identity(), "sealed_key": wrong}})
        assert_error(response, 400, "bad_signature")
        for malformed in ({"key": "short", "signature": good["signature"]},
                          {"key": sealed_key}, "a string"):
            response = await http.post("/keys/upload", headers=account.headers, json={
                "identity": {**keys.identity(), "sealed_key": malformed}})
            assert response.status_code == 400, response.text
        async with ChatClient(server.url, token=account.token) as client:
            [before] = await client.query_keys([account.user_id])
            assert before["devices"] == []
            await client.upload_keys({**keys.identity(), "sealed_key": good})
            [after] = await client.query_keys([account.user_id])
            assert after["devices"][0]["sealed_key"] == good
            # Uploads without it keep it; another one is refused.
            await client.upload_keys(keys.identity())
            other = unpadded(bytes(nacl.public.PrivateKey.generate().public_key))
            try:
                await client.upload_keys({**keys.identity(), "sealed_key": {
                    "key": other,
                    "signature": unpadded(keys.signing.sign(other.encode()).signature)}})
                raise AssertionError("a second sealed-sender key was taken")
            except ApiError as refused:
                assert (refused.status, refused.code) == (409, "sealed_key_changed")
            [last] = await client.query_keys([account.user_id])
            assert last["devices"][0]["sealed_key"] == good


async def test_a_device_without_a_sealed_key_adds_it_once(
        start_server: ServerFactory) -> None:
    """A device that published its identity before sealed sender may add the key later
    (the SDK does at its next start); the device-list version moves so others re-query."""
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        account = await new_account(http)
        keys = DeviceKeys()
        async with ChatClient(server.url, token=account.token) as client:
            await client.upload_keys(keys.identity())
            [first] = await client.query_keys([account.user_id])
            assert first["devices"][0]["sealed_key"] is None
            sealed_key = unpadded(bytes(nacl.public.PrivateKey.generate().public_key))
            good = {"key": sealed_key,
                    "signature": unpadded(keys.signing.sign(sealed_key.encode()).signature)}
            await client.upload_keys({**keys.identity(), "sealed_key": good})
            [second] = await client.query_keys([account.user_id])
            assert second["devices"][0]["sealed_key"] == good
            assert second["version"] == first["version"] + 1



async def test_the_sealed_key_survives_a_restart(start_server: ServerFactory,
                                                 tmp_path: Path) -> None:
    """The private half lives in the encrypted state: reopened, the device has the same
    key (no 409 on its next upload), and still opens envelopes sealed to the published
    one."""
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob:
        await bob.chat.set_access_key(ACCESS_KEY)
        before = public_key_text(bob.e2e.machine.sealed_key)
        bob.e2e = await E2EClient.open(bob.chat, bob.state_dir, "a long pass phrase",
                                       **CHEAP)
        assert public_key_text(bob.e2e.machine.sealed_key) == before
        assert await bob.e2e.refill_keys() >= 0  # uploads the same sealed key: accepted
        async with bob.chat.connect() as bob_live:
            await alice.e2e.sealed_send(bob.user_id, device_of(bob), {"text": "later"},
                                        ACCESS_KEY)
            got = await next_item(bob, bob_live, Decrypted)
        assert (got.content, got.sender_id) == ({"text": "later"}, alice.user_id)


async def test_a_sealed_frame_naming_a_sender_is_dropped(
        start_server: ServerFactory, tmp_path: Path) -> None:
    """The server queues `sealed` with no sender only (POST /to_device refuses the type):
    a `sealed` frame naming a sender is not the server's relay of a sealed send, and the
    SDK drops it rather than open it as one."""
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob:
        await bob.chat.set_access_key(ACCESS_KEY)
        async with bob.chat.connect() as bob_live:
            await alice.e2e.sealed_send(bob.user_id, device_of(bob), {"text": "psst"},
                                        ACCESS_KEY)
            frame = await next_sealed_frame(bob_live)
            forged = {**frame, "sender_user_id": alice.user_id,
                      "sender_device_id": device_of(alice)}
            assert await bob.e2e.handle(forged) == []
            # The same frame without the sender fields opens (the drop is theirs alone).
            [got] = await bob.e2e.handle(frame, bob_live)
            assert isinstance(got, Decrypted), got
            assert got.content == {"text": "psst"}
