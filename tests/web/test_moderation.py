"""Abuse detection end to end on a real shard: signals limit an account, a limited account
may only reply, the admin queue shows it and an admin lifts the limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from chatd.domain.abuse import Signal
from chatd.server import RunningServer
from tests.conftest import ServerFactory
from tests.helpers import Account, assert_error, new_account

ADMIN = "moderation-admin-token-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def moderated(start_server: ServerFactory) -> RunningServer:
    return await start_server(server={"admin_token": ADMIN},
                              abuse={"appeal": "write to abuse@chat.example"})


@pytest.fixture
async def http(moderated: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=moderated.url, timeout=30) as client:
        yield client


async def queue(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await http.get("/admin/abuse", headers=AS_ADMIN)
    assert response.status_code == 200, response.text
    return {account["user_id"]: account for account in response.json()["accounts"]}


async def in_queue(http: httpx.AsyncClient, account: Account) -> dict[str, Any]:
    with trio.fail_after(10):
        while (found := (await queue(http)).get(account.user_id)) is None:  # noqa: ASYNC110
            await trio.sleep(0.02)
    return found


def note(server: RunningServer, account: Account, signal: Signal, times: int) -> None:
    for _ in range(times):
        server.services.abuse.note(int(account.user_id), signal)


async def test_signals_limit_an_account_to_replying_until_an_admin_lifts_it(
        moderated: RunningServer, http: httpx.AsyncClient) -> None:
    spammer, friend, stranger, other = [await new_account(http) for _ in range(4)]
    chat = await friend.direct_with(spammer)  # (accepting scores the requester)
    group = await spammer.group("Mine", friend)

    # A young account opening 26 requests: (26 - 10) x 3 = 48, for review, not limited.
    note(moderated, spammer, "request_opened", 26)
    shown = await in_queue(http, spammer)
    assert (shown["score"], shown["limited"], shown["requests_opened"]) == (48, False, 26)
    assert (await spammer.direct_with(stranger, accept=False))  # still free to start conversations
    # Ten answers, all declines or blocks: + 60, and the account is limited.
    note(moderated, spammer, "request_declined", 6)
    note(moderated, spammer, "request_blocked", 4)
    with trio.fail_after(10):
        while not (shown := await in_queue(http, spammer))["limited"]:  # noqa: ASYNC110
            await trio.sleep(0.02)
    assert shown["score"] == 108 and shown["limited_by"] == "score"
    assert (shown["requests_declined"], shown["requests_blocked"]) == (6, 4)
    assert "declined or blocked" in shown["limit_reason"]
    assert len(shown["reasons"]) == 2

    refused = await spammer.post("/conversations/direct", {"user_id": other.user_id})
    assert_error(refused, 403, "account_limited")
    message = refused.json()["error"]["message"]
    assert "replying" in message and "write to abuse@chat.example" in message
    assert_error(await spammer.post("/groups/create", {"name": "New", "members": []}), 403,
                 "account_limited")
    assert_error(await spammer.post(f"/groups/{group}/add", {"user_ids": [other.user_id]}),
                 403, "account_limited")
    # Replying is still allowed: sending where it already talks, reopening its chats.
    assert (await spammer.send(chat, "still here")).status_code == 201
    assert (await spammer.send(group, "and here")).status_code == 201
    reopened = await spammer.post("/conversations/direct", {"user_id": friend.user_id})
    assert (reopened.status_code, reopened.json()["conversation_id"]) == (200, chat)
    assert (await spammer.post("/conversations/direct", {"user_id": spammer.user_id})
            ).status_code in (200, 201)  # a note to self starts nothing with anyone
    # Others may still start conversations with it.
    assert (await other.post("/conversations/direct", {"user_id": spammer.user_id})
            ).status_code == 201

    lifted = await http.post(f"/admin/users/{spammer.user_id}/unlimit",
                             json={"note": "spoke to them"}, headers=AS_ADMIN)
    assert lifted.status_code == 200, lifted.text
    assert (lifted.json()["limited"], lifted.json()["score"], lifted.json()["note"]) == (
        False, 0, "spoke to them")
    assert spammer.user_id not in await queue(http)
    assert (await spammer.post("/groups/create", {"name": "New", "members": []})
            ).status_code == 201
    # Only new signals count: ten more requests are still free.
    note(moderated, spammer, "request_opened", 10)
    note(moderated, spammer, "request_accepted", 1)
    await trio.sleep(0.2)
    assert spammer.user_id not in await queue(http)


async def test_reports_from_four_people_limit_an_account_and_a_dismissal_counts_down(
        moderated: RunningServer, http: httpx.AsyncClient) -> None:
    troll = await new_account(http)
    reporters = [await new_account(http) for _ in range(5)]

    async def report(reporter: Account, reason: str) -> str:
        chat = await reporter.direct_with(troll)
        seq = (await troll.send(chat, "go away")).json()["seq"]
        response = await reporter.post("/reports", {"conversation_id": chat, "seq": seq,
                                                    "reason": reason})
        assert response.status_code in (200, 201), response.text
        report_id: str = response.json()["report_id"]
        return report_id

    report_ids = [await report(reporter, "harassment") for reporter in reporters[:3]]
    # One person reporting many times weighs as one.
    await report(reporters[0], "abuse")
    shown = await in_queue(http, troll)
    assert (shown["score"], shown["reporters"], shown["limited"]) == (45, 3, False)
    # Dismissing one of them takes it out of the score.
    await http.post(f"/admin/reports/{report_ids[2]}/resolve", json={"action": "dismiss"},
                    headers=AS_ADMIN)
    assert (await in_queue(http, troll))["score"] == 30
    for reporter in reporters[3:]:
        await report(reporter, "spam")
    shown = await in_queue(http, troll)
    assert (shown["score"], shown["limited"]) == (60, True)
    assert_error(await troll.post("/groups/create", {"name": "x", "members": []}), 403,
                 "account_limited")


async def test_reports_naming_no_message_reach_the_admins_but_score_nothing(
        moderated: RunningServer, http: httpx.AsyncClient) -> None:
    """Throwaway accounts adding someone to a group and reporting them there, with no
    message of theirs to point at, cannot limit them."""
    victim = await new_account(http)
    sybils = [await new_account(http) for _ in range(5)]
    group = await sybils[0].group("Trap", victim, *sybils[1:])
    for sybil in sybils:
        response = await sybil.post("/reports", {"conversation_id": group,
                                                 "user_id": victim.user_id,
                                                 "reason": "harassment"})
        assert response.status_code == 201, response.text
    listed = await http.get("/admin/reports", headers=AS_ADMIN)
    assert sum(report["reported_id"] == victim.user_id
               for report in listed.json()["reports"]) == 5
    assert victim.user_id not in await queue(http)
    assert (await victim.post("/groups/create", {"name": "Mine", "members": []})
            ).status_code == 201


async def test_an_admin_limits_and_unlimits_by_hand_and_through_a_report(
        moderated: RunningServer, http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    limited = await http.post(f"/admin/users/{bob.user_id}/limit", json={"note": "scam"},
                              headers=AS_ADMIN)
    assert limited.status_code == 200, limited.text
    assert (limited.json()["limited"], limited.json()["limited_by"],
            limited.json()["limit_reason"]) == (True, "admin", "scam")
    refused = await bob.post("/conversations/direct", {"user_id": alice.user_id})
    assert_error(refused, 403, "account_limited")
    assert "a moderator limited it" in refused.json()["error"]["message"]
    assert "scam" not in refused.json()["error"]["message"]  # the admin's note is theirs
    assert (await queue(http))[bob.user_id]["limited"]
    await http.post(f"/admin/users/{bob.user_id}/unlimit", json={}, headers=AS_ADMIN)
    chat = await bob.direct_with(alice)

    # Resolving a report with `limit` limits the reported account.
    seq = (await bob.send(chat, "send me your password")).json()["seq"]
    report_id = (await alice.post("/reports", {"conversation_id": chat, "seq": seq,
                                               "reason": "illegal"})).json()["report_id"]
    resolved = await http.post(f"/admin/reports/{report_id}/resolve",
                               json={"action": "limit"}, headers=AS_ADMIN)
    assert resolved.status_code == 200, resolved.text
    assert_error(await bob.post("/groups/create", {"name": "x", "members": []}), 403,
                 "account_limited")
    shown = (await queue(http))[bob.user_id]
    assert shown["limit_reason"] == f"report {report_id} (illegal) upheld"

    assert_error(await http.post("/admin/users/12345/limit", json={}, headers=AS_ADMIN), 404,
                 "unknown_user")
    assert_error(await http.post(f"/admin/users/{bob.user_id}/limit",
                                 json={"note": "x" * 1001}, headers=AS_ADMIN), 400)


async def test_real_requests_and_their_declines_drive_the_senders_score(
        start_server: ServerFactory) -> None:
    """The privacy flow's signals reach the scorer: requests opened (first messages to
    strangers) and declined by their recipients, with no hand-fed signal."""
    server = await start_server(server={"admin_token": ADMIN}, abuse={
        "free_requests": 2, "young_request_weight": 1, "min_answered": 2,
        "answer_points": 40, "review_score": 1, "limit_score": 40})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        spammer, *strangers = [await new_account(http) for _ in range(4)]
        for stranger in strangers:
            chat = await spammer.direct_with(stranger, accept=False)
            assert (await spammer.send(chat, "buy now")).status_code == 201
        # Three requests, two of them free: score 1, in the queue, not limited.
        with trio.fail_after(10):
            while ((shown := (await queue(http)).get(spammer.user_id)) is None  # noqa: ASYNC110
                   or shown["requests_opened"] < 3):
                await trio.sleep(0.02)
        assert (shown["score"], shown["limited"]) == (1, False)
        # Two of the three decline: 2 answered, all declines, + 40: limited.
        for stranger in strangers[:2]:
            chat = await stranger.direct_with(spammer, accept=False)
            declined = await stranger.post(f"/conversations/{chat}/decline")
            assert declined.status_code == 200, declined.text
        with trio.fail_after(10):
            while not (shown := await in_queue(http, spammer))["limited"]:  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert shown["requests_declined"] == 2
        fresh = await new_account(http)
        assert_error(await spammer.post("/conversations/direct", {"user_id": fresh.user_id}),
                     403, "account_limited")
        # A reply from the third accepts: counted, and the spammer may answer there.
        last = await strangers[2].direct_with(spammer, accept=False)
        assert (await strangers[2].send(last, "who is this?")).status_code == 201
        assert (await spammer.send(last, "sorry")).status_code == 201
