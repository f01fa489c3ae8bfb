"""Forwarding over the real server: copies into conversations the caller is in, with
attachments shared by reference (downloadable by the target's members), per-target
answers, the source checks, the target bound and hop counting."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from chatd.domain.replies import FORWARDED_MANY_HOPS
from tests.conftest import ServerFactory
from tests.helpers import Account, assert_error, new_account


async def history(account: Account, conversation_id: str) -> dict[int, dict[str, Any]]:
    response = await account.get(f"/messages/{conversation_id}", params={"after": 0})
    assert response.status_code == 200, response.text
    return {message["seq"]: message for message in response.json()["messages"]}


async def forward(account: Account, conversation_id: str, seq: int, to: list[str],
                  **extra: Any) -> httpx.Response:
    return await account.post("/messages/forward", {
        "from": {"conversation_id": conversation_id, "seq": seq}, "to": to, **extra})


async def forwarded(account: Account, conversation_id: str, seq: int, to: list[str],
                    **extra: Any) -> list[dict[str, Any]]:
    response = await forward(account, conversation_id, seq, to, **extra)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


async def test_forward_copies_with_attachments_by_reference(start_server: ServerFactory,
                                                           ) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob, carol, dave = [await new_account(http) for _ in range(4)]
        source = await bob.direct_with(alice)
        group = await alice.group("friends", carol)
        other = await alice.direct_with(dave)
        uploaded = await http.post("/media/upload", content=b"holiday notes",
                                   headers={**bob.headers, "Content-Type": "text/plain"})
        assert uploaded.status_code == 201, uploaded.text
        media_id = uploaded.json()["media_id"]
        # Carol is in no conversation that carries it yet.
        assert (await carol.get(f"/media/{media_id}")).status_code == 404
        sent = await bob.post("/messages/send", {
            "conversation_id": source, "client_msg_id": "m1", "content_type": "text/plain",
            "body": "look at this", "attachments": [{"media_id": media_id}]})
        assert sent.status_code == 201, sent.text
        seq = sent.json()["seq"]

        results = await forwarded(alice, source, seq, [group, other])
        assert [result["conversation_id"] for result in results] == [group, other]
        assert all("error" not in result for result in results), results
        for account, conversation, result in ((carol, group, results[0]),
                                              (dave, other, results[1])):
            copy = (await history(account, conversation))[result["seq"]]
            assert copy["sender_id"] == alice.user_id
            assert (copy["body"], copy["content_type"]) == ("look at this", "text/plain")
            assert copy["forwarded"] is True and "forwarded_many" not in copy
            assert copy["message_id"] == result["message_id"]
            [attachment] = copy["attachments"]
            assert attachment["media_id"] == media_id  # the same media: not copied
            download = await account.get(f"/media/{media_id}")
            assert download.status_code == 200 and download.content == b"holiday notes"
        # The original is not marked.
        assert "forwarded" not in (await history(bob, source))[seq]


async def test_forward_needs_a_source_the_caller_can_read(start_server: ServerFactory,
                                                         ) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob, mallory = [await new_account(http) for _ in range(3)]
        source = await alice.direct_with(bob)
        mine = await mallory.group("mallory's")
        seq = (await alice.send(source, "private")).json()["seq"]
        # Not a member of the source: as if it did not exist.
        assert_error(await forward(mallory, source, seq, [mine]), 404)
        assert_error(await forward(alice, source, seq + 7, [source]), 404, "unknown_message")
        assert_error(await forward(alice, source, 0, [source]), 400)
        assert_error(await forward(alice, "123", 1, [source]), 404)
        # A deleted message is gone; the server's own entries are not messages.
        response = await alice.post(f"/messages/{source}/{seq}/delete", {"for": "everyone"})
        assert response.status_code == 204
        assert_error(await forward(alice, source, seq, [source]), 404, "unknown_message")
        group = await alice.group("g", bob)
        assert_error(await forward(alice, group, 1, [source]), 409, "not_forwardable")
        # Hidden for the caller ("delete for me"): not theirs to forward either.
        kept = (await alice.send(source, "hide me")).json()["seq"]
        response = await alice.post(f"/messages/{source}/{kept}/delete", {"for": "me"})
        assert response.status_code == 204
        assert_error(await forward(alice, source, kept, [group]), 404, "unknown_message")
        assert (await forward(bob, source, kept, [group])).status_code == 200
        # Nothing was copied by the refusals.
        assert sorted(await history(mallory, mine)) == [1]


async def test_forward_answers_each_target(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob, carol = [await new_account(http) for _ in range(3)]
        source = await alice.direct_with(bob)
        theirs = await bob.group("bob and carol", carol)  # alice is not in it
        mine = await alice.group("alice's")
        seq = (await alice.send(source, "pass it on")).json()["seq"]
        results = await forwarded(alice, source, seq, [theirs, mine, mine])
        assert len(results) == 2  # the same target twice is one copy
        assert results[0]["conversation_id"] == theirs
        assert results[0]["error"]["code"] == "unknown_conversation" and "seq" not in results[0]
        assert results[1]["conversation_id"] == mine and results[1]["seq"] == 2
        assert sorted(await history(bob, theirs)) == [1]

        # A retry with the same client_msg_id gives the same copy back.
        first = await forwarded(alice, source, seq, [mine], client_msg_id="fw-1")
        again = await forwarded(alice, source, seq, [mine], client_msg_id="fw-1")
        assert first == again
        assert sorted(await history(alice, mine)) == [1, 2, 3]

        targets = [await alice.group(f"g{n}") for n in range(6)]
        assert_error(await forward(alice, source, seq, targets), 400, "invalid_field")
        assert_error(await forward(alice, source, seq, []), 400, "invalid_field")
        assert_error(await forward(alice, source, seq, ["x"]), 400)
        assert_error(await alice.post("/messages/forward", {"to": [mine]}), 400,
                     "missing_field")
        assert_error(await alice.post("/messages/forward", {
            "from": "nope", "to": [mine]}), 400)
        assert (await forward(alice, source, seq, targets[:5])).status_code == 200


async def test_hops_are_counted_and_many_slows_down(start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        chain = [await alice.group(f"hop {n}", bob) for n in range(FORWARDED_MANY_HOPS + 1)]
        seq = (await alice.send(chain[0], f"rumour {uuid.uuid4().hex}")).json()["seq"]
        for hop in range(1, FORWARDED_MANY_HOPS + 1):
            forwarder = (alice, bob)[hop % 2]
            [result] = await forwarded(forwarder, chain[hop - 1], seq, [chain[hop]])
            seq = result["seq"]
            copy = (await history(alice, chain[hop]))[seq]
            assert copy["forwarded"] is True
            assert copy.get("forwarded_many", False) is (hop >= FORWARDED_MANY_HOPS)
        # Forwarded many times: one conversation at a time.
        last = chain[-1]
        assert_error(await forward(alice, last, seq, chain[:2]), 400, "forward_limited")
        [result] = await forwarded(alice, last, seq, [chain[0]])
        assert (await history(bob, chain[0]))[result["seq"]]["forwarded_many"] is True


async def test_forward_copies_an_edited_message_as_it_reads_now(
        start_server: ServerFactory) -> None:
    server = await start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        source = await alice.direct_with(bob)
        target = await alice.group("elsewhere")
        seq = (await alice.send(source, "draft")).json()["seq"]
        edited = await alice.post(f"/messages/{source}/{seq}/edit", {"body": "final"})
        assert edited.status_code == 200, edited.text
        [copy] = await forwarded(alice, source, seq, [target])
        message = (await history(alice, target))[copy["seq"]]
        assert message["body"] == "final" and "edited_at" not in message
        # Reactions, edits and pins are entries about messages, not messages.
        reacted = await bob.post(f"/messages/{source}/{seq}/reactions", {"emoji": "👍"})
        assert reacted.status_code == 200, reacted.text
        for entry in (edited.json()["seq"], max(await history(alice, source))):
            assert_error(await forward(alice, source, entry, [target]), 409, "not_forwardable")
