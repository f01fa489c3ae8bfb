from __future__ import annotations

import base64

import httpx
import pytest
import trio

from chatd.domain.models import Watermark
from chatd.server import RunningServer
from chatd.storage import records
from tests.helpers import Account, assert_error, new_account


async def history(account: Account, conversation_id: str, **params: int) -> dict[str, object]:
    response = await account.get(f"/messages/{conversation_id}", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, object] = response.json()
    return page


async def test_send_and_read_back(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    response = await alice.send(conversation_id, "hello, bob", client_msg_id="m-1")
    assert response.status_code == 201
    sent = response.json()
    assert set(sent) == {"message_id", "conversation_id", "seq", "ts"}
    assert sent["seq"] == 1 and sent["conversation_id"] == conversation_id
    assert sent["message_id"].isdigit()

    page = await history(bob, conversation_id)
    assert page == {"messages": [{
        "message_id": sent["message_id"], "conversation_id": conversation_id, "seq": 1,
        "sender_id": alice.user_id, "client_msg_id": "m-1", "content_type": "text/plain",
        "body": "hello, bob", "ts": sent["ts"]}], "has_more": False}


async def test_binary_bodies_are_opaque_base64(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    ciphertext = bytes(range(256))
    response = await alice.post("/messages/send", {
        "conversation_id": conversation_id, "client_msg_id": "enc-1",
        "content_type": "application/x-olm", "body": base64.b64encode(ciphertext).decode()})
    assert response.status_code == 201
    [message] = (await history(bob, conversation_id))["messages"]  # type: ignore[misc]
    assert base64.b64decode(message["body"]) == ciphertext
    bad = await alice.post("/messages/send", {
        "conversation_id": conversation_id, "client_msg_id": "enc-2",
        "content_type": "application/x-olm", "body": "not base64!"})
    assert_error(bad, 400, "invalid_field")


async def test_resend_with_the_same_client_msg_id_returns_the_original(
        http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    first = (await alice.send(conversation_id, "once", client_msg_id="retry-me")).json()
    again = await alice.send(conversation_id, "once", client_msg_id="retry-me")
    assert again.status_code == 201 and again.json() == first
    # The same client_msg_id from another sender is another message.
    other = (await bob.send(conversation_id, "mine", client_msg_id="retry-me")).json()
    assert other["seq"] == 2
    assert len((await history(alice, conversation_id))["messages"]) == 2  # type: ignore[arg-type]


async def test_a_burst_stores_each_senders_final_watermark(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    async with trio.open_nursery() as nursery:
        for n in range(40):
            nursery.start_soon(alice.send, conversation_id, f"burst {n}")
    store, conv = server.services.store, int(conversation_id)
    assert server.services.log.head(conv)[0] == 40
    assert store.get(records.WATERMARKS, (conv, int(alice.user_id))) == Watermark(40, 40)
    assert store.get(records.WATERMARKS, (conv, int(bob.user_id))) is None


async def test_concurrent_resends_write_one_message(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    answers: list[dict[str, object]] = []

    async def send() -> None:
        response = await alice.send(conversation_id, "dup", client_msg_id="same")
        assert response.status_code == 201
        answers.append(response.json())

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(send)
    assert len({answer["message_id"] for answer in answers}) == 1
    assert len((await history(alice, conversation_id))["messages"]) == 1  # type: ignore[arg-type]


async def test_fifty_concurrent_senders_get_dense_ordered_seqs(http: httpx.AsyncClient) -> None:
    admin = await new_account(http)
    members = [await new_account(http) for _ in range(50)]
    group = await admin.group("Crowd", *members)
    per_sender = 4
    acked: dict[int, tuple[str, str]] = {}

    async def sender(account: Account) -> None:
        for n in range(per_sender):
            text = f"{account.handle} #{n}"
            response = await account.send(group, text)
            assert response.status_code == 201, response.text
            seq = response.json()["seq"]
            assert seq not in acked
            acked[seq] = (account.user_id, text)

    async with trio.open_nursery() as nursery:
        for account in members:
            nursery.start_soon(sender, account)

    total = 1 + len(members) * per_sender  # the group_created entry is seq 1
    assert sorted(acked) == list(range(2, total + 1))
    seen: list[int] = []
    after = 0
    while True:
        page = await history(admin, group, after=after, limit=200)
        messages = page["messages"]
        assert isinstance(messages, list)
        seen.extend(m["seq"] for m in messages)
        for m in messages:
            if m["seq"] > 1:
                assert acked[m["seq"]] == (m["sender_id"], m["body"])
        if not page["has_more"]:
            break
        after = messages[-1]["seq"]
    assert seen == list(range(1, total + 1))
    # Each sender's own messages are in the order it sent them.
    for account in members:
        own = [acked[s][1] for s in sorted(acked) if acked[s][0] == account.user_id]
        assert own == [f"{account.handle} #{n}" for n in range(per_sender)]


async def test_history_paging(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    for n in range(1, 8):
        await alice.send(conversation_id, f"m{n}")

    def seqs(page: dict[str, object]) -> list[int]:
        return [m["seq"] for m in page["messages"]]  # type: ignore[attr-defined]

    newest = await history(bob, conversation_id, limit=3)
    assert (seqs(newest), newest["has_more"]) == ([5, 6, 7], True)
    older = await history(bob, conversation_id, before=5, limit=3)
    assert (seqs(older), older["has_more"]) == ([2, 3, 4], True)
    oldest = await history(bob, conversation_id, before=2, limit=3)
    assert (seqs(oldest), oldest["has_more"]) == ([1], False)
    forward = await history(bob, conversation_id, after=2, limit=3)
    assert (seqs(forward), forward["has_more"]) == ([3, 4, 5], True)
    window = await history(bob, conversation_id, after=2, before=5)
    assert (seqs(window), window["has_more"]) == ([3, 4], False)
    assert seqs(await history(bob, conversation_id, after=7)) == []
    assert seqs(await history(bob, conversation_id, before=1)) == []
    assert len(seqs(await history(bob, conversation_id))) == 7


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=x", "after=-1", "before=1e3",
                                   "after=99999999999999999999"])
async def test_history_rejects_bad_paging(http: httpx.AsyncClient, query: str) -> None:
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    assert_error(await alice.get(f"/messages/{conversation_id}?{query}"), 400)


async def test_message_status_rejects_bad_input(http: httpx.AsyncClient) -> None:
    alice, bob, mallory = [await new_account(http) for _ in range(3)]
    conversation_id = await alice.direct_with(bob)
    await alice.send(conversation_id, "one")
    status = (await alice.get(f"/messages/{conversation_id}/1/status")).json()
    assert {m["user_id"]: (m["delivered"], m["read"]) for m in status["members"]} == {
        alice.user_id: (True, True), bob.user_id: (False, False)}
    assert_error(await alice.get(f"/messages/{conversation_id}/2/status"), 404,
                 "unknown_message")
    assert_error(await alice.get(f"/messages/{conversation_id}/0/status"), 404)
    assert_error(await alice.get(f"/messages/{conversation_id}/x/status"), 400, "invalid_field")
    assert_error(await alice.get("/messages/777/1/status"), 404, "unknown_conversation")
    assert_error(await mallory.get(f"/messages/{conversation_id}/1/status"), 404,
                 "unknown_conversation")


async def test_strangers_can_read_and_post_nothing(http: httpx.AsyncClient) -> None:
    alice, bob, mallory = [await new_account(http) for _ in range(3)]
    direct = await alice.direct_with(bob)
    group = await alice.group("Private", bob)
    for conversation_id in (direct, group):
        assert_error(await mallory.get(f"/messages/{conversation_id}"), 404,
                     "unknown_conversation")
        assert_error(await mallory.send(conversation_id, "let me in"), 404,
                     "unknown_conversation")
    assert len((await history(alice, direct))["messages"]) == 0  # type: ignore[arg-type]


async def test_send_errors(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    base = {"conversation_id": conversation_id, "client_msg_id": "x1",
            "content_type": "text/plain", "body": "hi"}
    cases: list[tuple[dict[str, object], int, str]] = [
        ({**base, "conversation_id": "424242"}, 404, "unknown_conversation"),
        ({**base, "conversation_id": "abc"}, 400, "bad_request"),
        ({**base, "body": 42}, 400, "invalid_field"),
        ({**base, "body": None}, 400, "invalid_field"),
        ({**base, "content_type": "plain"}, 400, "bad_request"),
        ({**base, "content_type": "chatd/system"}, 400, "bad_request"),
        ({**base, "client_msg_id": ""}, 400, "bad_request"),
        ({**base, "client_msg_id": "x" * 65}, 400, "bad_request"),
        ({**base, "client_msg_id": ["x"]}, 400, "invalid_field"),
        ({k: v for k, v in base.items() if k != "client_msg_id"}, 400, "missing_field"),
        ({k: v for k, v in base.items() if k != "body"}, 400, "missing_field"),
        ({**base, "body": "x" * 65_537}, 413, "body_too_large"),
    ]
    for body, status, code in cases:
        assert_error(await alice.post("/messages/send", body), status, code)
    # Exactly at the limit is fine, counted in UTF-8 bytes.
    assert (await alice.post("/messages/send", {**base, "body": "é" * 32_768})).status_code == 201
    assert_error(await alice.post("/messages/send", {**base, "client_msg_id": "x2",
                                                     "body": "é" * 32_769}), 413)


async def test_huge_request_bodies_are_refused_without_harm(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    # A raw socket: the server answers 413 from the declared length, before the body, and
    # httpx would insist on sending the whole body before reading any answer.
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            b"POST /messages/send HTTP/1.1\r\nHost: chatd\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {alice.token}\r\n".encode()
            + b"Content-Length: 2000000\r\n\r\n" + b'{"body": "' + b"x" * 10_000)
        reply = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = await stream.receive_some()
                if not chunk:
                    break
                reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 ", reply
    assert b'"code":"payload_too_large"' in rest
    assert (await alice.send(conversation_id, "still fine")).status_code == 201


async def test_a_failed_send_does_not_disturb_other_users(http: httpx.AsyncClient) -> None:
    alice, bob, carol = [await new_account(http) for _ in range(3)]
    good = await alice.direct_with(bob)
    bad_sends = [alice.post("/messages/send", content=b"{not json"),
                 carol.send(good, "intruder"),
                 alice.send("123", "nowhere")]
    for call in bad_sends:
        assert (await call).status_code >= 400
    assert (await bob.send(good, "all good")).json()["seq"] == 1
