"""Bodies and contents from an untrusted server: anything malformed is a
`DecryptionError` with a reason, never a KeyError or TypeError out of a handler."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import msgpack
import pytest

from chatd.e2e import wire
from chatd.e2e.errors import DecryptionError
from tests.e2e.crypto_helpers import introduce, machine

GARBAGE_BODIES = [
    b"", b"\x00", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"v": 1}),
    msgpack.packb({"sender_key": 5, "sender_device_id": "d", "ciphertexts": {}}),
    msgpack.packb({"sender_key": "k", "sender_device_id": "d", "ciphertexts": []}),
    msgpack.packb({"sender_key": "k", "sender_device_id": "d",
                   "ciphertexts": {"x": [7, b"c"]}}),
    msgpack.packb({"sender_key": "k", "sender_device_id": "d",
                   "ciphertexts": {"x": [0, "not bytes"]}}),
    msgpack.packb({"sender_key": "k", "sender_device_id": "d", "session_id": "s",
                   "ciphertext": "text"}),
    b"\x91" * 10_000,  # deeply nested arrays
]


@pytest.mark.parametrize("body", GARBAGE_BODIES)
def test_garbage_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(DecryptionError):
        wire.OlmBody.from_bytes(body)
    with pytest.raises(DecryptionError):
        wire.MegolmBody.from_bytes(body)


@pytest.mark.parametrize("content", [
    None, "x", [], {}, {"sender_key": "k"}, {"sender_key": "k", "ciphertexts": []},
    {"sender_key": "k", "ciphertexts": {"a": {"type": 0}}},
    {"sender_key": "k", "ciphertexts": {"a": {"type": 0, "body": "***"}}},
    {"sender_key": "k", "ciphertexts": {"a": {"type": 3, "body": "AAAA"}}},
    {"sender_key": "k", "ciphertexts": {"a": "AAAA"}},
    {"sender_key": 1, "ciphertexts": {"a": {"type": 0, "body": "AAAA"}}},
])
def test_garbage_to_device_contents_are_refused(content: Any) -> None:
    with pytest.raises(DecryptionError):
        wire.parse_to_device_content(content)


@pytest.mark.parametrize("message", [
    {},
    {"conversation_id": "1", "seq": "1", "content_type": wire.OLM_CONTENT_TYPE, "body": ""},
    {"conversation_id": "1", "seq": 1, "content_type": wire.OLM_CONTENT_TYPE, "body": "!!"},
    {"conversation_id": "1", "seq": 1, "content_type": wire.OLM_CONTENT_TYPE, "body": None},
    {"conversation_id": "1", "seq": 1, "content_type": "text/plain", "body": "hi"},
    {"conversation_id": "1", "seq": 1, "content_type": wire.MEGOLM_CONTENT_TYPE,
     "body": base64.b64encode(wire.MegolmBody("k", "d", "nosuch", b"x").to_bytes()).decode()},
    {"conversation_id": "1", "seq": 1, "sender_id": "1",
     "content_type": wire.OLM_CONTENT_TYPE,
     "body": base64.b64encode(wire.OlmBody("k", "d", {}).to_bytes()).decode()},
])
def test_garbage_messages_are_undecryptable(tmp_path: Path, message: dict[str, Any]) -> None:
    bob = machine(tmp_path, "2", "21")
    with pytest.raises(DecryptionError):
        bob.decrypt(message)
    bob.keep(message)  # keeping one is harmless, whatever it is
    assert bob.retry() == []


def test_a_forged_olm_ciphertext_from_a_known_device_is_refused(tmp_path: Path) -> None:
    alice, bob = machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21")
    introduce(alice, bob)
    body = wire.OlmBody(alice.identity.curve25519, "11",
                        {bob.identity.curve25519: (0, b"\x03" + b"\x00" * 80)})
    message = {"conversation_id": "1", "seq": 1, "sender_id": "1",
               "content_type": wire.OLM_CONTENT_TYPE, "body": body.to_bytes()}
    with pytest.raises(DecryptionError):
        bob.decrypt(message)
    body = wire.OlmBody(alice.identity.curve25519, "11",
                        {bob.identity.curve25519: (1, b"\x03" + b"\x00" * 80)})
    with pytest.raises(DecryptionError):
        bob.decrypt({**message, "body": body.to_bytes()})


def test_a_device_with_a_malformed_key_is_untrusted_not_a_crash(tmp_path: Path) -> None:
    from chatd.e2e.errors import UntrustedKeys
    from chatd.e2e.trust import DeviceKeys

    alice, bob = machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21")
    body = bob.account.prepare_upload()
    signed = next(iter(body["one_time_keys"].values()))
    # Self-signed, so the signature checks; but the "key" is no Curve25519 key.
    odd = DeviceKeys("2", "21", "not-a-key", bob.identity.ed25519)
    with pytest.raises(UntrustedKeys):
        alice.start_session(odd, signed["key"] + "x", bob.account.sign(signed["key"] + "x"))
