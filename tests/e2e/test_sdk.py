"""The SDK over a real server, with two and three users: Olm 1:1 both ways (from the first
pre-key message), a Megolm group where a removed member cannot read later messages and a
late joiner cannot read earlier ones, replays refused, messages that wait for their key,
key-change warnings, state that survives a restart, and no plaintext in any file of the
server's data directory."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from chatd.client import ChatClient
from chatd.e2e.client import E2EClient
from chatd.e2e.errors import E2EError, WrongPassphrase
from chatd.e2e.media import upload_encrypted
from chatd.e2e.store import StateStore
from tests.conftest import ServerFactory
from tests.e2e.crypto_helpers import CHEAP
from tests.e2e.sdk_helpers import (
    Decrypted,
    KeyWarning,
    SdkUser,
    Undecryptable,
    drain,
    next_decrypted,
    next_item,
    olm_type_for,
    sdk_user,
)
from tests.helpers import PASSWORD, UNLIMITED_SENDS
from tests.web.test_compact import ADMIN, compact, files_holding


async def drain_raw(live: Any, seconds: float = 0.5) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            frames.append(await live.next_event())
    return frames


async def open_direct(a: SdkUser, b: SdkUser) -> str:
    """An encrypted direct chat between two SDK users, accepted by the second."""
    opened = await a.chat.open_direct(b.user_id, encrypted=True)
    if opened.get("request") == "sent":
        await b.chat.accept_request(opened["conversation_id"])
    assert opened.get("encrypted") is True
    conversation_id: str = opened["conversation_id"]
    return conversation_id


async def test_olm_direct_both_ways_from_the_first_pre_key_message(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob:
        conversation = await open_direct(alice, bob)
        async with alice.chat.connect() as alice_live, bob.chat.connect() as bob_live:
            await alice.e2e.send(conversation, {"text": "hello bob"}, live=alice_live)
            got = await next_decrypted(bob, bob_live)
            assert (got.content, got.sender_id) == ({"text": "hello bob"}, alice.user_id)
            assert olm_type_for(got.message, bob) == 0  # the first one: a pre-key message
            await bob.e2e.send(conversation, {"text": "hi alice"}, live=bob_live)
            back = await next_decrypted(alice, alice_live)
            assert back.content == {"text": "hi alice"}
            assert olm_type_for(back.message, alice) == 1  # bob answers on that session
            await alice.e2e.send(conversation, {"text": "again"})  # over REST this time
            again = await next_decrypted(bob, bob_live)
            assert again.content == {"text": "again"} and olm_type_for(again.message, bob) == 1
        # History holds only ciphertext; the SDK reads it back.
        history = await bob.chat.history(conversation)
        assert all(m["content_type"] == "application/vnd.chatd.olm"
                   for m in history["messages"])


async def test_megolm_group_removed_member_and_late_joiner(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob, \
            sdk_user(server.url, tmp_path) as carol, \
            sdk_user(server.url, tmp_path) as dave:
        group = await alice.chat.create_group("secret", [bob.user_id, carol.user_id],
                                              encrypted=True)
        conversation = group["conversation_id"]
        async with alice.chat.connect() as alice_live, bob.chat.connect() as bob_live, \
                carol.chat.connect() as carol_live:
            await alice.e2e.send(conversation, {"text": "to all three"}, live=alice_live)
            for user, live in ((bob, bob_live), (carol, carol_live)):
                got = await next_decrypted(user, live)
                assert got.content == {"text": "to all three"}
            await carol.e2e.send(conversation, {"text": "carol here"}, live=carol_live)
            assert (await next_decrypted(bob, bob_live)).content == {"text": "carol here"}
            assert (await next_decrypted(alice, alice_live)).content == {
                "text": "carol here"}

            response = await alice.chat.request("POST", f"/groups/{conversation}/remove",
                                                {"user_ids": [carol.user_id]})
            assert carol.user_id not in [m["user_id"] for m in response["members"]]
            session_before = alice.e2e.machine.megolm.outbound[conversation].session.session_id
            await drain(alice, alice_live)  # the removal entry: alice's session rotates
            assert conversation not in alice.e2e.machine.megolm.outbound
            await alice.e2e.send(conversation, {"text": "carol is gone"}, live=alice_live)
            after = await next_decrypted(bob, bob_live)
            assert after.content == {"text": "carol is gone"}
            assert alice.e2e.machine.megolm.outbound[conversation].session.session_id \
                != session_before
            # Carol gets the ciphertext by other means (it is no secret): she cannot read it.
            refused = await carol.e2e.decrypt(after.message)
            assert isinstance(refused, Undecryptable), refused

            await alice.chat.request("POST", f"/groups/{conversation}/add",
                                     {"user_ids": [dave.user_id]})
            async with dave.chat.connect() as dave_live:
                await drain(alice, alice_live)
                await alice.e2e.send(conversation, {"text": "welcome dave"},
                                     live=alice_live)
                welcome = await next_decrypted(dave, dave_live)
                assert welcome.content == {"text": "welcome dave"}
                assert (await next_decrypted(bob, bob_live)).content == {
                    "text": "welcome dave"}
                # Dave cannot read what was said before he came.
                earlier = await dave.e2e.decrypt(after.message)
                assert isinstance(earlier, Undecryptable), earlier


async def test_replays_and_relayed_ciphertexts_are_refused(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob, \
            sdk_user(server.url, tmp_path) as carol:
        group = await alice.chat.create_group("g", [bob.user_id, carol.user_id],
                                              encrypted=True)
        conversation = group["conversation_id"]
        async with alice.chat.connect() as alice_live, bob.chat.connect() as bob_live, \
                carol.chat.connect() as carol_live:
            await alice.e2e.send(conversation, {"text": "pay bob 10"}, live=alice_live)
            original = await next_decrypted(bob, bob_live)
            assert (await next_decrypted(carol, carol_live)).content["text"] == "pay bob 10"
            # Bob sends alice's ciphertext again, as his own message: carol refuses it.
            await bob_live.send(conversation, base64.b64decode(original.message["body"]),
                                content_type="application/vnd.chatd.megolm")
            relayed = await next_item(carol, carol_live, Undecryptable)
            assert "another sender" in relayed.reason
            # The server replays alice's message under a new seq: refused as a replay.
            replayed = await carol.e2e.decrypt({**original.message,
                                                "seq": original.message["seq"] + 10})
            assert isinstance(replayed, Undecryptable) and "already used" in replayed.reason


async def test_a_message_that_arrives_before_its_key_is_decrypted_when_it_comes(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob:
        group = await alice.chat.create_group("g", [bob.user_id], encrypted=True)
        conversation = group["conversation_id"]
        await alice.e2e.send(conversation, {"text": "while you were away"})
        async with bob.chat.connect() as bob_live:
            # Take the room key (to-device) and the message in whatever order they came,
            # and hand them to the SDK message first.
            frames: list[dict[str, Any]] = []

            def encrypted(frame: dict[str, Any]) -> bool:
                return frame["type"] == "message" and frame["message"][
                    "content_type"] == "application/vnd.chatd.megolm"

            with trio.fail_after(10):
                while not (any(f["type"] == "to_device" for f in frames)
                           and any(encrypted(f) for f in frames)):
                    frames.append(await bob_live.next_event())
            frames.sort(key=lambda f: not encrypted(f))
            first = await bob.e2e.handle(frames[0], bob_live)
            assert [type(i) for i in first] == [Undecryptable] and first[0].kept
            assert bob.e2e.machine.pending
            rest = [item for f in frames[1:] for item in await bob.e2e.handle(f, bob_live)]
            (decrypted,) = [i for i in rest if isinstance(i, Decrypted)]
            assert decrypted.content == {"text": "while you were away"}
            assert not bob.e2e.machine.pending


async def test_key_change_warnings_and_safety_numbers(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob:
        conversation = await open_direct(alice, bob)
        await alice.e2e.send(conversation, {"text": "hi"})
        number = await alice.e2e.safety_number(bob.user_id)
        assert number == await bob.e2e.safety_number(alice.user_id)
        assert len(number.replace(" ", "")) == 60
        alice.e2e.verify(bob.user_id)
        async with alice.chat.connect() as alice_live:
            # Bob reinstalls: his old device goes, a new one with new keys comes.
            await bob.chat.request("DELETE", f"/devices/{bob.e2e.machine.device_id}")
            async with sdk_user(server.url, tmp_path, bob.handle, register=False) as bob2:
                warnings: list[KeyWarning] = []
                with trio.fail_after(10):
                    while {w.change.kind for w in warnings} != {"added", "removed"}:
                        items = await alice.e2e.handle(await alice_live.next_event(),
                                                       alice_live)
                        warnings.extend(i for i in items if isinstance(i, KeyWarning))
                assert all(w.change.was_verified for w in warnings)
                assert await alice.e2e.safety_number(bob.user_id) != number
                assert not alice.e2e.machine.trust.is_verified(bob.user_id)
                # And messages now go to the new device.
                await alice.e2e.send(conversation, {"text": "new phone?"})
                async with bob2.chat.connect() as bob_live:
                    got = await next_decrypted(bob2, bob_live)
                    assert got.content == {"text": "new phone?"}


async def test_state_survives_a_restart_and_a_wrong_passphrase_fails(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob:
        conversation = await open_direct(alice, bob)
        group = (await alice.chat.create_group("g", [bob.user_id], encrypted=True))[
            "conversation_id"]
        async with bob.chat.connect() as bob_live:
            await alice.e2e.send(conversation, {"text": "before"})
            await alice.e2e.send(group, {"text": "group before"})
            assert (await next_decrypted(bob, bob_live)).content["text"] == "before"
            assert (await next_decrypted(bob, bob_live)).content["text"] == "group before"
            # Alice's app restarts: same device (token), state from disk.
            with pytest.raises(WrongPassphrase):
                await E2EClient.open(alice.chat, alice.state_dir, "not the phrase", **CHEAP)
            reopened = await E2EClient.open(alice.chat, alice.state_dir,
                                            "a long pass phrase", **CHEAP)
            assert reopened.machine.identity == alice.e2e.machine.identity
            await reopened.send(conversation, {"text": "after"})
            got = await next_decrypted(bob, bob_live)
            assert got.content["text"] == "after" and olm_type_for(got.message, bob) == 0
            await reopened.send(group, {"text": "group after"})
            assert (await next_decrypted(bob, bob_live)).content["text"] == "group after"
        # The same Megolm session went on (no new room key was needed after the restart).
        assert len(bob.e2e.machine.megolm.inbound) == 1
        # A state directory is readable only with its passphrase, whatever the cost.
        with pytest.raises(WrongPassphrase):
            StateStore.open(bob.state_dir, PASSWORD, **CHEAP)


async def test_no_plaintext_reaches_the_servers_disk(start_server: ServerFactory,
                                                     tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS, server={"admin_token": ADMIN})
    secret = f"secret-{uuid.uuid4().hex}"
    group_secret = f"groupsecret-{uuid.uuid4().hex}"
    control = f"control-{uuid.uuid4().hex}"
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob, \
            sdk_user(server.url, tmp_path) as carol, \
            httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        conversation = await open_direct(alice, bob)
        group = (await alice.chat.create_group("g", [bob.user_id, carol.user_id],
                                               encrypted=True))["conversation_id"]
        plain = (await alice.chat.create_group("plain", [carol.user_id]))["conversation_id"]
        async with bob.chat.connect() as bob_live:
            for n in range(3):
                await alice.e2e.send(conversation, {"text": f"{secret} {n}"})
                await alice.e2e.send(group, {"text": f"{group_secret} {n}"})
            await bob.e2e.send(conversation, {"text": f"{secret} from bob"}, live=bob_live)
            texts = {(await next_decrypted(bob, bob_live)).content["text"] for _ in range(6)}
            assert f"{secret} 2" in texts and f"{group_secret} 2" in texts
        # And an encrypted file, its description in an encrypted message.
        media = await upload_encrypted(alice.chat, f"file {secret}".encode() * 50,
                                       "text/plain", filename=f"{secret}.txt")
        await alice.e2e.send(group, {"media": media.to_content()},
                             attachments=[media.attachment()])
        await alice.chat.send(plain, f"{control} in the clear")
        await alice.chat.upload(f"{control} a file in the clear".encode(), "text/plain")
        # The scan can fail: the plaintext control message is in the write-ahead log
        # (never compressed, so a literal search there is exact) and the clear file in
        # the media store. Everything is scanned before the flush, when every message is
        # in the log, and after it, in the table files. (Table blocks are compressed, so
        # a literal can be split by a back-reference there: the log is the exact check,
        # and why the control is not required in a table file.)
        holding = files_holding(server, control)
        assert any(name.endswith(".log") for name in holding), holding
        assert any(name.startswith("media/") for name in holding), holding
        needles = (secret, group_secret, "secret-", "groupsecret-", f"{secret}.txt")
        for needle in needles:
            assert files_holding(server, needle) == [], needle
        await compact(http)
        assert files_holding(server, control)
        for needle in needles:
            assert files_holding(server, needle) == [], needle


async def test_keys_are_refilled_and_the_fallback_key_opens_sessions(
        start_server: ServerFactory, tmp_path: Path) -> None:
    # One claimer (carol) drains bob's keys here: its share covers all of them.
    server = await start_server(ratelimits=UNLIMITED_SENDS, keys={"claims_per_claimer": 100})
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob, \
            sdk_user(server.url, tmp_path) as carol:
        conversation = await open_direct(alice, bob)
        bob_device = (bob.user_id, bob.e2e.machine.device_id)
        identity = bob.e2e.machine.account.identity_payload()
        async with bob.chat.connect() as bob_live:
            # Carol takes every one-time key bob published; then the fallback key.
            claimed = [await carol.chat.claim_keys([bob_device]) for _ in range(50)]
            assert not any(c["keys"][0]["fallback"] for c in claimed)
            assert (await carol.chat.claim_keys([bob_device]))["keys"][0]["fallback"]
            # Alice's session is opened from the fallback key: it still works.
            await alice.e2e.send(conversation, {"text": "on the fallback key"})
            got = await next_decrypted(bob, bob_live)
            assert got.content == {"text": "on the fallback key"}
            # keys_low reached bob's SDK on the way: it uploaded a fresh batch and a new
            # fallback key.
            await drain(bob, bob_live)
            assert await bob.chat.upload_keys(identity) == 50
            fresh = await carol.chat.claim_keys([bob_device])
            assert not fresh["keys"][0]["fallback"]
            assert fresh["keys"][0]["key"] not in {c["keys"][0]["key"] for c in claimed}


async def test_a_stale_device_list_is_queried_again_and_the_new_device_reads(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob:
        conversation = await open_direct(alice, bob)
        await alice.e2e.send(conversation, {"text": "one device"})
        before = alice.e2e.versions[bob.user_id]
        # Bob logs in on a second device; alice, not connected, hears nothing of it.
        async with sdk_user(server.url, tmp_path, bob.handle, register=False) as bob2:
            await alice.e2e.send(conversation, {"text": "both devices"})  # 409, then again
            assert alice.e2e.versions[bob.user_id] > before
            async with bob2.chat.connect() as live:
                got = await next_decrypted(bob2, live)
                assert got.content == {"text": "both devices"}


async def test_encrypted_media_rides_in_an_encrypted_message(
        start_server: ServerFactory, tmp_path: Path) -> None:
    """The seam with `chatd.e2e.media`: the file's description (key, hash) is content the
    SDK encrypts, its blob an attachment the server lets members fetch."""
    from chatd.e2e.media import EncryptedMedia, fetch_decrypted

    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob:
        group = (await alice.chat.create_group("g", [bob.user_id], encrypted=True))[
            "conversation_id"]
        photo = b"not really a png " + uuid.uuid4().bytes * 100
        media = await upload_encrypted(alice.chat, photo, "image/png", filename="p.png")
        async with bob.chat.connect() as bob_live:
            await alice.e2e.send(group, {"text": "look", "media": media.to_content()},
                                 attachments=[media.attachment()])
            got = await next_decrypted(bob, bob_live)
        assert got.content["text"] == "look"
        opened = EncryptedMedia.from_content(got.content["media"])
        assert opened.filename == "p.png"
        assert await fetch_decrypted(bob.chat, opened) == photo


async def test_concurrent_sends_share_one_session_once(start_server: ServerFactory,
                                                       tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob:
        group = (await alice.chat.create_group("g", [bob.user_id], encrypted=True))[
            "conversation_id"]
        async with bob.chat.connect() as bob_live:
            async with trio.open_nursery() as nursery:
                for n in range(8):
                    nursery.start_soon(alice.e2e.send, group, {"text": f"m{n}"})
            texts: set[str] = set()
            room_keys = 0
            with trio.fail_after(10):
                while len(texts) < 8:
                    event = await bob_live.next_event()
                    room_keys += event["type"] == "to_device"
                    texts.update(item.content["text"] for item in await bob.e2e.handle(
                        event, bob_live) if isinstance(item, Decrypted))
            assert texts == {f"m{n}" for n in range(8)}
            room_keys += sum(e["type"] == "to_device" for e in await drain_raw(bob_live))
            assert room_keys == 1  # the session was shared once, not once per send


async def test_a_member_removed_while_the_sender_was_away_gets_no_key(
        start_server: ServerFactory, tmp_path: Path) -> None:
    """Alice sends right after another admin removed carol, before any log entry reached
    her SDK: the member list is the server's, so carol's devices get no room key."""
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob, \
            sdk_user(server.url, tmp_path) as carol:
        group = (await alice.chat.create_group("g", [bob.user_id, carol.user_id],
                                               encrypted=True))["conversation_id"]
        await alice.chat.request("POST", f"/groups/{group}/admins",
                                 {"user_ids": [bob.user_id]})
        await alice.e2e.send(group, {"text": "before"})
        await bob.chat.request("POST", f"/groups/{group}/remove",
                               {"user_ids": [carol.user_id]})
        await alice.e2e.send(group, {"text": "after"})
        async with carol.chat.connect() as carol_live, bob.chat.connect() as bob_live:
            before = await next_decrypted(bob, bob_live)
            after = await next_decrypted(bob, bob_live)
            assert (before.content["text"], after.content["text"]) == ("before", "after")
            await drain(carol, carol_live, 1.0)  # her room keys, whatever came
            assert isinstance(await carol.e2e.decrypt(before.message), Decrypted)
            assert isinstance(await carol.e2e.decrypt(after.message), Undecryptable)


async def test_a_peer_without_keys_is_said_so_and_nothing_is_sent(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, ChatClient(server.url) as plain:
        handle = f"plain{uuid.uuid4().hex[:8]}"
        await plain.register(handle, PASSWORD, "Plain")
        credentials = await plain.login(handle, PASSWORD)
        opened = await alice.chat.open_direct(credentials.user_id, encrypted=True)
        with pytest.raises(E2EError, match="no device with end-to-end keys"):
            await alice.e2e.send(opened["conversation_id"], {"text": "hello?"})
        assert (await alice.chat.history(opened["conversation_id"]))["messages"] == []
