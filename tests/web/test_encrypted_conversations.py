"""Encrypted conversations (issue 14 §3): `encrypted: true` at creation, shown in every
view, ciphertext content types only, and nothing of an opaque body indexed, quoted or
copied into a report."""

from __future__ import annotations

import base64

import httpx
import pytest

from chatd.client import ApiError, ChatClient
from chatd.domain import rules
from chatd.storage import records
from tests.conftest import ServerFactory
from tests.helpers import assert_error, live, new_account

OLM = "application/vnd.chatd.olm"
MEGOLM = "application/vnd.chatd.megolm"


def ciphertext(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_created_encrypted_and_shown_in_every_view(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        carol = await new_account(http)
        async with ChatClient(server.url, token=alice.token) as client:
            direct = await client.open_direct(bob.user_id, encrypted=True)
            group = await client.create_group("secret", [bob.user_id], encrypted=True)
            plain = await client.open_direct(carol.user_id)
            assert direct["encrypted"] is True and group["encrypted"] is True
            assert plain["encrypted"] is False
            listed = {conv["conversation_id"]: conv["encrypted"]
                      for conv in await client.conversations()}
            assert listed == {direct["conversation_id"]: True,
                              group["conversation_id"]: True,
                              plain["conversation_id"]: False}
            for conv, expected in ((direct, True), (group, True), (plain, False)):
                one = await client.request("GET", f"/conversations/{conv['conversation_id']}")
                assert one["encrypted"] is expected
            # Bob sees the same (a view as the other member).
            async with ChatClient(server.url, token=bob.token) as bob_client:
                view = await bob_client.request(
                    "GET", f"/conversations/{direct['conversation_id']}")
                assert view["encrypted"] is True
            # Stored with the conversation record (replicated like the rest of it).
            record = server.services.store.get(records.CONVERSATIONS,
                                               int(group["conversation_id"]))
            assert record is not None and record.encrypted


async def test_cannot_be_switched(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        carol = await new_account(http)
        encrypted = await alice.post("/conversations/direct",
                                     {"user_id": bob.user_id, "encrypted": True})
        assert encrypted.status_code == 201, encrypted.text
        conversation_id = encrypted.json()["conversation_id"]
        # Asking for a plaintext one of the same pair: refused, not switched.
        assert_error(await alice.post("/conversations/direct",
                                      {"user_id": bob.user_id, "encrypted": False}),
                     409, "encryption_mismatch")
        assert_error(await bob.post("/conversations/direct",
                                    {"user_id": alice.user_id, "encrypted": False}),
                     409, "encryption_mismatch")
        # Without `encrypted`, or with true, it is handed out as it is.
        for body in ({"user_id": bob.user_id}, {"user_id": bob.user_id, "encrypted": True}):
            again = await alice.post("/conversations/direct", body)
            assert again.status_code == 200, again.text
            assert again.json()["conversation_id"] == conversation_id
            assert again.json()["encrypted"] is True
        plain = await alice.post("/conversations/direct", {"user_id": carol.user_id})
        assert_error(await alice.post("/conversations/direct",
                                      {"user_id": carol.user_id, "encrypted": True}),
                     409, "encryption_mismatch")
        assert plain.json()["encrypted"] is False
        assert_error(await alice.post("/conversations/direct",
                                      {"user_id": bob.user_id, "encrypted": "yes"}), 400)
        assert_error(await alice.post("/groups/create", {"name": "g", "members": [],
                                                         "encrypted": 1}), 400)
        # Nothing changes a conversation's `encrypted`: the change route refuses the field.
        assert_error(await alice.patch(f"/conversations/{conversation_id}",
                                       {"encrypted": False, "disappearing_s": 0}),
                     400, "invalid_field")
        view = await alice.get(f"/conversations/{conversation_id}")
        assert view.json()["encrypted"] is True


@pytest.mark.parametrize("kind", ["direct", "group"])
async def test_plaintext_refused_ciphertext_accepted(start_server: ServerFactory,
                                                     kind: str) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        async with ChatClient(server.url, token=alice.token) as client:
            conv = (await client.open_direct(bob.user_id, encrypted=True) if kind == "direct"
                    else await client.create_group("g", [bob.user_id], encrypted=True))
            conversation_id = conv["conversation_id"]
            for content_type, body in (("text/plain", "hello"), ("image/jpeg", ciphertext(b"x")),
                                       ("application/octet-stream", ciphertext(b"x"))):
                response = await alice.post("/messages/send", {
                    "conversation_id": conversation_id, "client_msg_id": "p" + content_type[:4],
                    "content_type": content_type, "body": body})
                assert_error(response, 400, "plaintext_refused")
            for content_type in rules.ENCRYPTED_CONTENT_TYPES:
                response = await alice.post("/messages/send", {
                    "conversation_id": conversation_id,
                    "client_msg_id": content_type.rsplit(".", 1)[1],
                    "content_type": content_type, "body": ciphertext(b"\x00\xffsecret")})
                assert response.status_code == 201, response.text
            async with live(server.url, alice) as connection:
                with pytest.raises(ApiError) as refused:
                    await connection.send(conversation_id, "plain over ws")
                assert refused.value.code == "plaintext_refused"
                sent = await connection.send(conversation_id, b"\x01\x02opaque",
                                             content_type=MEGOLM)
                assert sent["seq"] >= 1
            history = await client.history(conversation_id)
            bodies = [(message["content_type"], message["body"])
                      for message in history["messages"]
                      if message["content_type"] != "chatd/system"]
            assert [content_type for content_type, _ in bodies] == [
                *rules.ENCRYPTED_CONTENT_TYPES, MEGOLM]
            assert bodies[-1][1] == ciphertext(b"\x01\x02opaque")
            # Stored as opaque bytes.
            rows = server.services.store.scan(records.MESSAGES,
                                              records.u64(int(conversation_id)))
            assert all(isinstance(message.body, bytes) for _, message in rows
                       if message.content_type in rules.ENCRYPTED_CONTENT_TYPES)
            # Forwarding plaintext into it is a send like any other: refused.
            plain = await client.open_direct(alice.user_id)
            sent_plain = await client.send(plain["conversation_id"], "note to self")
            results = await client.forward(plain["conversation_id"], sent_plain["seq"],
                                           [conversation_id])
            assert results[0]["error"]["code"] == "plaintext_refused"


async def test_no_mentions_quotes_or_report_text_from_ciphertext(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice = await new_account(http)
        bob = await new_account(http)
        async with ChatClient(server.url, token=alice.token) as client:
            conv = await client.create_group("g", [bob.user_id], encrypted=True)
            conversation_id = conv["conversation_id"]
            # Bytes that would read as a mention and as text if anything parsed them.
            body = ciphertext(f"@{bob.handle} hello".encode())
            first = await alice.post("/messages/send", {
                "conversation_id": conversation_id, "client_msg_id": "m1",
                "content_type": OLM, "body": body})
            assert first.status_code == 201
            # Explicit mention ids still work; a reply's quote shows no text.
            reply = await alice.post("/messages/send", {
                "conversation_id": conversation_id, "client_msg_id": "m2",
                "content_type": MEGOLM, "body": body, "mentions": [bob.user_id],
                "reply_to": first.json()["seq"]})
            assert reply.status_code == 201, reply.text
            page = (await client.history(conversation_id))["messages"]
            by_id = {message["client_msg_id"]: message for message in page}
            assert "mentions" not in by_id["m1"]
            assert by_id["m2"]["mentions"] == [bob.user_id]
            quote = by_id["m2"]["quote"]
            assert "text" not in quote and quote["content_type"] == OLM
        # Bob reports Alice's message: only his own evidence goes into the report.
        reported = await bob.post("/reports", {
            "conversation_id": conversation_id, "seq": first.json()["seq"],
            "reason": "spam", "evidence": "decrypted by me: hello"})
        assert reported.status_code in (200, 201), reported.text
        reports = server.services.store.scan(records.REPORTS, b"")
        assert len(reports) == 1
        report = reports[0][1]
        assert report.message_text == "" and report.evidence == "decrypted by me: hello"
        assert report.content_type == OLM
