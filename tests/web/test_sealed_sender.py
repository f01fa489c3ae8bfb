"""Sealed sender (issue 14 §5): sender certificates signed by the server's Ed25519 key,
unidentified access keys, and POST /sealed/send delivering an envelope whose stored
record holds no sender."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import nacl.public
import nacl.signing
import pytest

from chatd.client import ACCESS_KEY_HEADER, ApiError, ChatClient
from chatd.server import RunningServer
from chatd.services.sealed_sender import signing_key
from chatd.storage import records
from tests.conftest import ServerFactory
from tests.helpers import Account, assert_error, new_account
from tests.web.test_to_device import frames_until, rows_of


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unpadded(data: bytes) -> str:
    return b64(data).rstrip("=")


class DeviceKeys:
    """A device's identity as the key directory takes it: a curve25519 key (here a
    PyNaCl one, so the test can open sealed boxes) signed by the device's Ed25519 key."""

    def __init__(self) -> None:
        self.curve = nacl.public.PrivateKey.generate()
        self.signing = nacl.signing.SigningKey.generate()

    @property
    def curve25519(self) -> str:
        return unpadded(bytes(self.curve.public_key))

    def identity(self) -> dict[str, str]:
        signature = self.signing.sign(self.curve25519.encode()).signature
        return {"curve25519": self.curve25519,
                "ed25519": unpadded(bytes(self.signing.verify_key)),
                "signature": unpadded(signature)}

    def open(self, envelope_b64: str) -> bytes:
        return nacl.public.SealedBox(self.curve).decrypt(base64.b64decode(envelope_b64))


async def with_keys(server: RunningServer, account: Account) -> DeviceKeys:
    """Published in the key directory (POST /keys/upload)."""
    keys = DeviceKeys()
    async with ChatClient(server.url, token=account.token) as client:
        await client.upload_keys(keys.identity())
    return keys


def seal(recipient: DeviceKeys, certificate: dict[str, Any], message: bytes) -> bytes:
    inner = json.dumps({"certificate": certificate["certificate"],
                        "signature": certificate["signature"],
                        "message": b64(message)}).encode()
    public = nacl.public.PublicKey(base64.b64decode(recipient.curve25519 + "="))
    return nacl.public.SealedBox(public).encrypt(inner)


async def test_certificate_is_signed_short_lived_and_names_the_identity_key(
        start_server: ServerFactory) -> None:
    server = await start_server(sealed_sender={"certificate_ttl": 600.0})
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        async with ChatClient(server.url, token=alice.token) as client:
            try:
                await client.sender_certificate()
                raise AssertionError("a certificate without an identity key")
            except ApiError as refused:
                assert (refused.status, refused.code) == (409, "no_identity_key")
            keys = await with_keys(server, alice)
            cert = await client.sender_certificate()
            server_keys = await client.server_keys()
        signed = base64.b64decode(cert["certificate"])
        fields = json.loads(signed)
        assert fields == {"user_id": alice.user_id, "device_id": alice.device_id,
                          "identity_key": keys.curve25519, "expires": cert["expires"],
                          "key_id": cert["key_id"]}
        now_ms = time.time() * 1000
        assert now_ms + 590_000 < cert["expires"] <= now_ms + 601_000
        verify_key = nacl.signing.VerifyKey(base64.b64decode(server_keys[cert["key_id"]]))
        verify_key.verify(signed, base64.b64decode(cert["signature"]))
        # A changed certificate does not verify.
        forged = signed.replace(alice.user_id.encode(), b"1")
        with pytest.raises(nacl.exceptions.BadSignatureError):
            verify_key.verify(forged, base64.b64decode(cert["signature"]))
        # The public list needs no token; the certificate does.
        assert (await http.get("/certificate/server_keys")).json()["keys"] == server_keys
        assert_error(await http.get("/certificate/sender"), 401)


async def test_the_key_is_kept_in_the_data_directory(start_server: ServerFactory) -> None:
    """Generated on first start and kept in the database (so a restart signs with the
    same key: `signing_key` reads the same seed back)."""
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        published = (await http.get("/certificate/server_keys")).json()
    seed = server.services.store.get(records.META, "sealed_sender_signing_seed")
    assert isinstance(seed, bytes) and len(seed) == 32
    assert published == {"keys": {server.services.sealed.key_id: b64(bytes(
        nacl.signing.SigningKey(seed).verify_key))}, "unreachable": []}
    assert signing_key(server.services.store).encode() == seed


async def test_sealed_send_delivers_without_recording_the_sender(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        await with_keys(server, alice)
        bob_keys = await with_keys(server, bob)
        access_key = bytes(range(16))
        async with ChatClient(server.url, token=alice.token) as sender, \
                ChatClient(server.url, token=bob.token) as receiver:
            await receiver.set_access_key(access_key)
            cert = await sender.sender_certificate()
            envelope = seal(bob_keys, cert, b"olm ciphertext")
            anonymous = ChatClient(server.url)  # no token at all
            async with anonymous, receiver.connect() as live:
                await anonymous.sealed_send(bob.user_id, bob.device_id, envelope, access_key)
                [frame] = await frames_until(live, 1)
                assert frame == {"type": "to_device", "id": 1, "message_type": "sealed",
                                 "content": {"envelope": b64(envelope)}}
                # Only the recipient learns (and checks) who sent it.
                inner = json.loads(bob_keys.open(frame["content"]["envelope"]))
                assert json.loads(base64.b64decode(inner["certificate"]))["user_id"] == \
                    alice.user_id
                assert base64.b64decode(inner["message"]) == b"olm ciphertext"
                # The stored record: no sender, no txn, nothing but the envelope.
                rows = server.services.store.scan(
                    records.TO_DEVICE, records.pair(int(bob.user_id), int(bob.device_id)))
                # (The fifth field is when it was queued, for the queue's TTL.)
                [[*fields, queued_ms]] = [value for _, value in rows]
                assert fields == [0, 0, "sealed", {"envelope": b64(envelope)}]
                assert isinstance(queued_ms, int)
                assert server.services.store.scan(records.TO_DEVICE_TXNS, b"") == []
                packed = b"".join(records.pack(value) for _, value in rows)
                assert int(alice.user_id).to_bytes(8, "big") not in packed
                assert alice.user_id.encode() not in packed
                await live.ack_to_device(frame["id"])
            assert rows_of(server, bob) == []


async def test_wrong_or_missing_access_key_is_one_401(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        bob = await new_account(http)
        carol = await new_account(http)  # never set a key
        access_key = b"k" * 16
        async with ChatClient(server.url, token=bob.token) as receiver:
            await receiver.set_access_key(access_key)
        body = {"user_id": bob.user_id, "device_id": bob.device_id, "envelope": b64(b"x")}

        async def sealed(headers: dict[str, str], **changes: str) -> httpx.Response:
            return await http.post("/sealed/send", json={**body, **changes}, headers=headers)

        wrong = await sealed({ACCESS_KEY_HEADER: b64(b"j" * 16)})
        assert_error(wrong, 401, "unauthorized")
        unknown_user = await sealed({ACCESS_KEY_HEADER: b64(b"j" * 16)},
                                    user_id="999999999999")
        no_key_set = await sealed({ACCESS_KEY_HEADER: b64(access_key)}, user_id=carol.user_id)
        # The same answer: nothing says whether the user exists or has a key.
        assert unknown_user.status_code == no_key_set.status_code == 401
        assert unknown_user.json() == no_key_set.json() == wrong.json()
        for headers in ({}, {ACCESS_KEY_HEADER: "not base64!"},
                        {ACCESS_KEY_HEADER: b64(b"short")}):
            assert_error(await sealed(headers), 401)
        # A bearer token is no way in either.
        assert_error(await sealed({"Authorization": f"Bearer {bob.token}"}), 401)
        assert rows_of(server, bob) == []
        # With the key: an unknown device of that user is named (the key's holder may know).
        assert_error(await sealed({ACCESS_KEY_HEADER: b64(access_key)},
                                  device_id="123456789"), 404, "unknown_device")
        good = await sealed({ACCESS_KEY_HEADER: b64(access_key)})
        assert good.status_code == 204, good.text
        assert rows_of(server, bob) == [1]
        # Malformed bodies.
        for bad in ({**body, "envelope": "%%%"}, {**body, "user_id": 5},
                    {"user_id": bob.user_id}, []):
            response = await http.post("/sealed/send", json=bad,
                                       headers={ACCESS_KEY_HEADER: b64(access_key)})
            assert response.status_code == 400, response.text
        # Access keys are exactly 16 bytes.
        for bad_key in ("", b64(b"x" * 15), b64(b"x" * 17), "A" * 24):
            assert_error(await bob.http.put("/me/access_key", json={"access_key": bad_key},
                                            headers=bob.headers), 400)


async def test_rate_limited_per_address(start_server: ServerFactory) -> None:
    server = await start_server(ratelimits={"sealed_send_per_address": "3/1h burst 3",
                                            "login_per_account": "off",
                                            "login_per_address": "off",
                                            "register_per_address": "off"})
    async with httpx.AsyncClient(base_url=server.url) as http:
        bob = await new_account(http)
        body = {"user_id": bob.user_id, "device_id": bob.device_id, "envelope": b64(b"x")}
        statuses = [(await http.post("/sealed/send", json=body, headers={
            ACCESS_KEY_HEADER: b64(b"w" * 16)})).status_code for _ in range(4)]
        # Wrong keys are charged too: guessing costs the same as sending.
        assert statuses == [401, 401, 401, 429]


async def test_sealed_type_and_every_device_are_refused(start_server: ServerFactory) -> None:
    """`sealed` is reserved for POST /sealed/send (no signed-in sender may pass as one),
    and a sealed send names one device: 0 ("every device") is refused."""
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        access_key = b"k" * 16
        async with ChatClient(server.url, token=bob.token) as receiver:
            await receiver.set_access_key(access_key)
        forged = await http.post("/to_device", headers=alice.headers, json={
            "txn_id": "t1", "messages": {bob.user_id: {bob.device_id: {
                "type": "sealed", "content": {"envelope": b64(b"x")}}}}})
        assert_error(forged, 400, "reserved_type")
        body = {"user_id": bob.user_id, "device_id": "0", "envelope": b64(b"x")}
        every = await http.post("/sealed/send", json=body,
                                headers={ACCESS_KEY_HEADER: b64(access_key)})
        assert every.status_code == 400, every.text
        assert rows_of(server, bob) == []
        good = await http.post("/sealed/send", json={**body, "device_id": bob.device_id},
                               headers={ACCESS_KEY_HEADER: b64(access_key)})
        assert good.status_code == 204, good.text
        assert rows_of(server, bob) == [1]
