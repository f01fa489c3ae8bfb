"""The SDK's crypto without a server: two and three devices exchanging what the server
would relay (the same bodies and to-device contents), directly."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from chatd.e2e import wire
from chatd.e2e.errors import (
    DecryptionError,
    ForgedMessage,
    MissingKeys,
    ReplayError,
    UntrustedKeys,
)
from chatd.e2e.machine import E2EMachine
from chatd.e2e.megolm import ROTATE_AFTER_MESSAGES, ROTATE_AFTER_MS
from chatd.e2e.trust import DeviceKeys
from tests.e2e.crypto_helpers import connect, introduce, machine, open_store

CONV = "1001"
_seqs = iter(range(1, 1_000_000))


def as_message(sender: E2EMachine, body: bytes, content_type: str, conversation: str = CONV,
               seq: int | None = None, sender_id: str | None = None) -> dict[str, Any]:
    """The message the server would deliver (a JSON connection: the body in base64)."""
    return {"conversation_id": conversation, "seq": seq or next(_seqs),
            "sender_id": sender_id or sender.user_id, "content_type": content_type,
            "body": base64.b64encode(body).decode()}


def to_device(sender: E2EMachine, messages: dict[str, Any], user_id: str,
              device_id: str) -> dict[str, Any]:
    message = messages[user_id][device_id]
    return {"type": "to_device", "id": 1, "sender_user_id": sender.user_id,
            "sender_device_id": sender.device_id, "message_type": message["type"],
            "content": message["content"]}


def group_send(sender: E2EMachine, receivers: list[E2EMachine], text: str, now: int = 0,
               ) -> tuple[dict[str, Any], list[str]]:
    """`sender` encrypts to `receivers` (sharing its session where needed); every
    receiver gets its room key. Returns the message and the session ids delivered."""
    devices = [r.me() for r in receivers]
    outbound = sender.group_session(CONV, now, devices)
    shared = sender.room_key_messages(outbound, devices)
    sender.mark_shared(outbound, devices)
    ids = []
    for r in receivers:
        if r.user_id in shared and r.device_id in shared[r.user_id]:
            ids.append(r.receive_to_device(to_device(sender, shared, r.user_id, r.device_id)))
    body = sender.encrypt_group(outbound, {"text": text})
    return as_message(sender, body, wire.MEGOLM_CONTENT_TYPE), [i for i in ids if i]


def direct(sender: E2EMachine, receivers: list[E2EMachine], text: str) -> dict[str, Any]:
    body = sender.encrypt_direct(CONV, {"text": text}, [r.me() for r in receivers])
    return as_message(sender, body, wire.OLM_CONTENT_TYPE)


def test_olm_both_ways_from_the_first_pre_key_message(tmp_path: Path) -> None:
    alice, bob = machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21")
    introduce(alice, bob)
    connect(alice, bob)
    first = direct(alice, [bob], "hello bob")
    assert wire.OlmBody.from_bytes(base64.b64decode(first["body"])).ciphertexts[
        bob.identity.curve25519][0] == 0  # a pre-key message
    assert bob.decrypt(first).content == {"text": "hello bob"}
    assert bob.needs_session([alice.me()]) == []  # the inbound session answers back
    answer = direct(bob, [alice], "hi alice")
    assert alice.decrypt(answer).content == {"text": "hi alice"}
    again = direct(alice, [bob], "how are you")
    assert wire.OlmBody.from_bytes(base64.b64decode(again["body"])).ciphertexts[
        bob.identity.curve25519][0] == 1  # the ratchet has turned: a normal message
    assert bob.decrypt(again).content["text"] == "how are you"


def test_olm_refuses_what_was_not_for_this_device_or_from_this_sender(tmp_path: Path) -> None:
    alice, bob, eve = (machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21"),
                       machine(tmp_path, "3", "31"))
    introduce(alice, bob, eve)
    connect(alice, bob)
    message = direct(alice, [bob], "for bob")
    with pytest.raises(DecryptionError, match="not encrypted for this device"):
        eve.decrypt(message)
    # The server claims eve sent it: the key inside is alice's device, not eve's.
    with pytest.raises(ForgedMessage):
        bob.decrypt({**message, "sender_id": eve.user_id})
    # Moved into another conversation, it is refused too (the plaintext names its own).
    connect(alice, eve)
    moved = direct(alice, [eve], "where it belongs")
    with pytest.raises(ForgedMessage, match="another conversation"):
        eve.decrypt({**moved, "conversation_id": "999"})


def test_a_claimed_key_must_carry_the_device_signature(tmp_path: Path) -> None:
    alice, bob = machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21")
    introduce(alice, bob)
    body = bob.account.prepare_upload()
    signed = next(iter(body["one_time_keys"].values()))
    forged = alice.account.prepare_upload()  # a key the server made up
    other = next(iter(forged["one_time_keys"].values()))
    with pytest.raises(UntrustedKeys):
        alice.start_session(bob.me(), other["key"], signed["signature"])
    alice.start_session(bob.me(), signed["key"], signed["signature"])


def test_upload_payload_signatures_and_shape(tmp_path: Path) -> None:
    from chatd.e2e.account import TARGET_ONE_TIME_KEYS, verify_signature
    alice = machine(tmp_path, "1", "11")
    body = alice.account.prepare_upload()
    identity = body["identity"]
    assert verify_signature(identity["ed25519"], identity["curve25519"],
                            identity["signature"])
    assert len(body["one_time_keys"]) == TARGET_ONE_TIME_KEYS
    (fallback,) = body["fallback_key"].values()
    assert verify_signature(identity["ed25519"], fallback["key"], fallback["signature"])
    for signed in body["one_time_keys"].values():
        assert verify_signature(identity["ed25519"], signed["key"], signed["signature"])
    # An upload that failed is sent again with the same keys; a published one is not.
    assert alice.account.prepare_upload()["one_time_keys"] == body["one_time_keys"]
    alice.account.mark_published()
    refill = alice.account.prepare_upload(server_count=45, new_fallback=True)
    assert len(refill["one_time_keys"]) == 5
    assert not set(refill["one_time_keys"]) & set(body["one_time_keys"])
    assert refill["fallback_key"] != body["fallback_key"]


def test_megolm_group_and_a_removed_member(tmp_path: Path) -> None:
    alice, bob, carol = (machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21"),
                         machine(tmp_path, "3", "31"))
    introduce(alice, bob, carol)
    connect(alice, bob, carol)
    message, _ = group_send(alice, [bob, carol], "to both")
    assert bob.decrypt(message).content["text"] == "to both"
    assert carol.decrypt(message).content["text"] == "to both"
    alice.on_system_entry({"conversation_id": CONV, "content_type": "chatd/system",
                           "body": {"event": "members_removed", "user_ids": ["3"]}})
    later, _ = group_send(alice, [bob], "carol is gone")
    assert bob.decrypt(later).content["text"] == "carol is gone"
    with pytest.raises(MissingKeys):
        carol.decrypt(later)


def test_megolm_rotates_when_a_device_is_no_longer_a_recipient(tmp_path: Path) -> None:
    alice, bob, carol = (machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21"),
                         machine(tmp_path, "3", "31"))
    introduce(alice, bob, carol)
    connect(alice, bob, carol)
    first = alice.group_session(CONV, 0, [bob.me(), carol.me()])
    alice.mark_shared(first, [bob.me(), carol.me()])
    assert alice.group_session(CONV, 0, [bob.me(), carol.me()]) is first
    assert alice.group_session(CONV, 0, [bob.me()]) is not first


def test_megolm_rotates_after_100_messages_and_a_week(tmp_path: Path) -> None:
    alice, bob = machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21")
    introduce(alice, bob)
    connect(alice, bob)
    outbound = alice.group_session(CONV, 0, [bob.me()])
    for _ in range(ROTATE_AFTER_MESSAGES - 1):
        alice.encrypt_group(outbound, {"text": "x"})
    assert alice.group_session(CONV, 0, [bob.me()]) is outbound
    alice.encrypt_group(outbound, {"text": "the 100th"})
    rotated = alice.group_session(CONV, 0, [bob.me()])
    assert rotated is not outbound
    assert alice.group_session(CONV, ROTATE_AFTER_MS - 1, [bob.me()]) is rotated
    assert alice.group_session(CONV, ROTATE_AFTER_MS, [bob.me()]) is not rotated


def test_a_late_joiner_cannot_read_earlier_messages(tmp_path: Path) -> None:
    alice, bob, dave = (machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21"),
                        machine(tmp_path, "4", "41"))
    introduce(alice, bob, dave)
    connect(alice, bob, dave)
    before, _ = group_send(alice, [bob], "before dave")
    after, _ = group_send(alice, [bob, dave], "after dave")  # same session, shared now
    assert dave.decrypt(after).content["text"] == "after dave"
    with pytest.raises(DecryptionError, match="predates"):
        dave.decrypt(before)
    assert bob.decrypt(before).content["text"] == "before dave"


def test_megolm_replay_is_refused_but_a_redelivery_is_not(tmp_path: Path) -> None:
    alice, bob = machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21")
    introduce(alice, bob)
    connect(alice, bob)
    message, _ = group_send(alice, [bob], "pay 10 euros")
    assert bob.decrypt(message).content["text"] == "pay 10 euros"
    assert bob.decrypt(message).content["text"] == "pay 10 euros"  # same seq: redelivery
    with pytest.raises(ReplayError):
        bob.decrypt({**message, "seq": message["seq"] + 50})
    # Another member relaying it as theirs: the session is alice's.
    with pytest.raises(ForgedMessage):
        bob.decrypt({**message, "seq": message["seq"] + 51, "sender_id": "3"})


def test_undecryptable_is_kept_and_decrypted_when_the_key_arrives(tmp_path: Path) -> None:
    alice, bob = machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21")
    introduce(alice, bob)
    connect(alice, bob)
    outbound = alice.group_session(CONV, 0, [bob.me()])
    shared = alice.room_key_messages(outbound, [bob.me()])
    message = as_message(alice, alice.encrypt_group(outbound, {"text": "early"}),
                         wire.MEGOLM_CONTENT_TYPE)
    with pytest.raises(MissingKeys) as caught:
        bob.decrypt(message)
    assert caught.value.retryable
    bob.keep(message)
    bob.save()
    # A restart in between: the kept message is in the encrypted state.
    bob = E2EMachine.load(open_store(tmp_path / "2-21"), "2", "21")
    session_id = bob.receive_to_device(to_device(alice, shared, "2", "21"))
    (decrypted,) = bob.retry(session_id)
    assert decrypted.content["text"] == "early"
    assert bob.pending == {}


def test_state_survives_a_restart(tmp_path: Path) -> None:
    alice, bob = machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21")
    introduce(alice, bob)
    connect(alice, bob)
    assert bob.decrypt(direct(alice, [bob], "one")).content["text"] == "one"
    group, _ = group_send(alice, [bob], "group one")
    bob.decrypt(group)
    alice.save()
    bob.save()
    alice2 = E2EMachine.load(open_store(tmp_path / "1-11"), "1", "11")
    bob2 = E2EMachine.load(open_store(tmp_path / "2-21"), "2", "21")
    assert alice2.identity == alice.identity
    assert bob2.decrypt(direct(alice2, [bob2], "two")).content["text"] == "two"
    assert alice2.decrypt(direct(bob2, [alice2], "back")).content["text"] == "back"
    outbound = alice2.group_session(CONV, 0, [bob2.me()])
    assert outbound.session.session_id == alice.megolm.outbound[CONV].session.session_id
    again = as_message(alice2, alice2.encrypt_group(outbound, {"text": "group two"}),
                       wire.MEGOLM_CONTENT_TYPE)
    assert bob2.decrypt(again).content["text"] == "group two"
    with pytest.raises(ReplayError):  # the replay index was saved too
        bob2.decrypt({**group, "seq": group["seq"] + 100})
    assert bob2.safety_number("1") == alice2.safety_number("2")


def test_a_state_belongs_to_one_device(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    E2EMachine.load(store, "1", "11")
    with pytest.raises(UntrustedKeys, match="belongs to device 1/11"):
        E2EMachine.load(open_store(tmp_path / "s"), "1", "12")


def test_olm_sessions_started_by_both_sides_at_once_converge(tmp_path: Path) -> None:
    alice, bob = machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21")
    introduce(alice, bob)
    connect(alice, bob)
    connect(bob, alice)  # each claimed a key of the other before hearing from them
    from_alice = direct(alice, [bob], "a1")
    from_bob = direct(bob, [alice], "b1")
    assert bob.decrypt(from_alice).content["text"] == "a1"
    assert alice.decrypt(from_bob).content["text"] == "b1"
    for n in range(3):
        assert bob.decrypt(direct(alice, [bob], f"a{n + 2}")).content["text"] == f"a{n + 2}"
        assert alice.decrypt(direct(bob, [alice], f"b{n + 2}")).content["text"] == f"b{n + 2}"
    # A pre-key message delivered twice is refused the second time, not a new session.
    with pytest.raises(DecryptionError):
        bob.decrypt(from_alice)


def test_a_copy_of_a_devices_keys_neither_shadows_it_nor_is_encrypted_to(
        tmp_path: Path) -> None:
    """The review's key substitution: Bob learns of Mallory's device, published with
    Alice's identity keys, before Alice's. Alice's genuine message still decrypts and is
    attributed to her; her message relayed as Mallory's is refused; neither device is
    encrypted to, and both are reported."""
    alice, bob = machine(tmp_path, "1", "11"), machine(tmp_path, "2", "21")
    copy = DeviceKeys("3", "31", alice.identity.curve25519, alice.identity.ed25519)
    assert bob.observe_devices("3", [copy]) == []
    changes = bob.observe_devices("1", [alice.me()])
    assert sorted((c.kind, c.user_id) for c in changes) == [("duplicate", "1"),
                                                            ("duplicate", "3")]
    alice.observe_devices("2", [bob.me()])
    connect(alice, bob)
    message = direct(alice, [bob], "hello bob, from alice")
    got = bob.decrypt(message)
    assert (got.content, got.sender_id, got.sender_device_id) == (
        {"text": "hello bob, from alice"}, "1", "11")
    # The server says Mallory's device sent Alice's next message: the payload names Alice.
    second = direct(alice, [bob], "second")
    body = wire.OlmBody.from_bytes(base64.b64decode(second["body"]))
    relayed = wire.OlmBody(body.sender_key, "31", body.ciphertexts).to_bytes()
    with pytest.raises(ForgedMessage):
        bob.decrypt(as_message(alice, relayed, wire.OLM_CONTENT_TYPE, sender_id="3"))
    assert bob.decrypt(direct(alice, [bob], "third")).content == {"text": "third"}
    assert bob.recipients(["1", "3"]) == []
