"""POST /reports and the admin's moderation routes on a real shard: who may report what,
what is refused and how, repeats, the admin's list and resolutions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from chatd.server import RunningServer
from tests.conftest import ServerFactory
from tests.helpers import Account, assert_error, new_account

ADMIN = "moderation-admin-token-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
async def moderated(start_server: ServerFactory) -> RunningServer:
    return await start_server(server={"admin_token": ADMIN})


@pytest.fixture
async def admin_http(moderated: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=moderated.url, timeout=30) as client:
        yield client


async def report(account: Account, conversation_id: str, **fields: object) -> httpx.Response:
    return await account.post("/reports", {"conversation_id": conversation_id,
                                           "reason": "spam", **fields})


async def open_reports(http: httpx.AsyncClient, **params: object) -> list[dict[str, object]]:
    response = await http.get("/admin/reports", params=params, headers=AS_ADMIN)
    assert response.status_code == 200, response.text
    reports: list[dict[str, object]] = response.json()["reports"]
    return reports


async def test_a_member_reports_a_message_and_its_sender_is_reported(
        admin_http: httpx.AsyncClient) -> None:
    alice, mallory = await new_account(admin_http), await new_account(admin_http)
    chat = await alice.direct_with(mallory)
    sent = (await mallory.send(chat, "buy cheap pills")).json()
    response = await report(alice, chat, seq=sent["seq"], note="again and again",
                            evidence="mallory: buy cheap pills")
    assert response.status_code == 201, response.text
    report_id = response.json()["report_id"]
    [listed] = await open_reports(admin_http)
    assert listed == {
        "report_id": report_id, "reported_id": mallory.user_id, "reporter_id": alice.user_id,
        "conversation_id": chat, "seq": sent["seq"], "reason": "spam",
        "note": "again and again", "evidence": "mallory: buy cheap pills",
        "created_at": listed["created_at"], "content_type": "text/plain",
        "message_text": "buy cheap pills", "status": "open", "resolved_at": 0, "action": "",
        "resolution_note": "", "message_id": sent["message_id"]}

    # The same message again, by the same reporter: the same report (200), not a new one.
    again = await report(alice, chat, seq=sent["seq"], evidence="changed my mind")
    assert (again.status_code, again.json()) == (200, {"report_id": report_id})
    assert len(await open_reports(admin_http)) == 1


async def test_a_member_reports_a_member_without_a_message(
        admin_http: httpx.AsyncClient) -> None:
    alice, bob, carol = [await new_account(admin_http) for _ in range(3)]
    group = await alice.group("Team", bob, carol)
    response = await report(carol, group, user_id=bob.user_id, reason="harassment")
    assert response.status_code == 201, response.text
    [listed] = await open_reports(admin_http)
    assert (listed["reported_id"], listed["seq"], listed["reason"]) == (
        bob.user_id, 0, "harassment")
    assert "message_id" not in listed
    # Naming the sender of a message along with it is fine; naming someone else is not.
    seq = (await bob.send(group, "hi")).json()["seq"]
    assert (await report(carol, group, seq=seq, user_id=bob.user_id)).status_code == 201
    assert_error(await report(carol, group, seq=seq, user_id=alice.user_id), 400,
                 "not_the_sender")


async def test_strangers_and_unreadable_messages_are_not_found(
        admin_http: httpx.AsyncClient) -> None:
    alice, bob, eve = [await new_account(admin_http) for _ in range(3)]
    group = await alice.group("Team", bob)
    seq = (await bob.send(group, "before eve")).json()["seq"]
    # Not a member: the same 404 as a conversation that does not exist.
    assert_error(await report(eve, group, seq=seq), 404, "unknown_conversation")
    assert_error(await report(eve, "4242424242", user_id=bob.user_id), 404,
                 "unknown_conversation")
    # A member who joined after the message cannot read it, so cannot report it.
    assert (await alice.post(f"/groups/{group}/add", {"user_ids": [eve.user_id]})
            ).status_code == 200
    assert_error(await report(eve, group, seq=seq), 404, "unknown_message")
    assert_error(await report(eve, group, seq=999), 404, "unknown_message")
    # Someone who is not in the conversation, named directly.
    dave = await new_account(admin_http)
    assert_error(await report(alice, group, user_id=dave.user_id), 400, "not_a_member")
    assert await open_reports(admin_http) == []


async def test_bad_reports_are_refused(admin_http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(admin_http), await new_account(admin_http)
    chat = await alice.direct_with(bob)
    seq = (await alice.send(chat, "my own")).json()["seq"]
    assert_error(await report(alice, chat, user_id=alice.user_id), 400,
                 "cannot_report_yourself")
    assert_error(await report(alice, chat, seq=seq), 400, "cannot_report_yourself")
    assert_error(await report(alice, chat), 400, "missing_field")
    assert_error(await report(alice, chat, user_id=bob.user_id, reason="rude"), 400,
                 "invalid_field")
    assert_error(await report(alice, chat, user_id=bob.user_id, reason="other"), 400,
                 "invalid_field")  # "other" wants a note
    assert (await report(alice, chat, user_id=bob.user_id, reason="other",
                         note="impersonates my bank")).status_code == 201
    for bad in ({"seq": "1"}, {"seq": 0}, {"seq": True}, {"user_id": 5},
                {"user_id": bob.user_id, "evidence": 7},
                {"user_id": bob.user_id, "note": "x" * 1001}):
        assert_error(await report(alice, chat, **bad), 400)
    assert_error(await alice.post("/reports", {"reason": "spam", "user_id": bob.user_id}),
                 400, "missing_field")
    assert_error(await alice.post("/reports", [1]), 400, "malformed_json")
    assert_error(await report(alice, chat, user_id=bob.user_id, evidence="é" * 40_000), 413,
                 "evidence_too_large")
    # Exactly at the limit is taken (a repeat of the report above, so 200).
    assert (await report(alice, chat, user_id=bob.user_id, reason="abuse",
                         evidence="x" * 65_536)).status_code == 200
    assert_error(await admin_http.post("/reports", json={"conversation_id": chat,
                                                         "reason": "spam"}), 401)


async def test_the_admin_pages_and_resolves_reports(admin_http: httpx.AsyncClient) -> None:
    reporters = [await new_account(admin_http) for _ in range(3)]
    mallory = await new_account(admin_http)
    chats = [await reporter.direct_with(mallory) for reporter in reporters]
    ids = []
    for reporter, chat in zip(reporters, chats, strict=True):
        ids.append((await report(reporter, chat, user_id=mallory.user_id)).json()["report_id"])

    first = (await admin_http.get("/admin/reports", params={"limit": 2},
                                  headers=AS_ADMIN)).json()
    assert [r["report_id"] for r in first["reports"]] == ids[:2]
    assert first["unreachable"] == [] and first["next_after"] == ids[1]
    rest = (await admin_http.get("/admin/reports", params={"after": ids[1]},
                                 headers=AS_ADMIN)).json()
    assert [r["report_id"] for r in rest["reports"]] == ids[2:] and "next_after" not in rest

    resolved = await admin_http.post(f"/admin/reports/{ids[0]}/resolve",
                                     json={"action": "dismiss", "note": "a joke"},
                                     headers=AS_ADMIN)
    assert resolved.status_code == 200, resolved.text
    assert (resolved.json()["status"], resolved.json()["action"],
            resolved.json()["resolution_note"]) == ("resolved", "dismiss", "a joke")
    assert_error(await admin_http.post(f"/admin/reports/{ids[0]}/resolve",
                                       json={"action": "uphold"}, headers=AS_ADMIN),
                 409, "already_resolved")
    assert [r["report_id"] for r in await open_reports(admin_http)] == ids[1:]
    assert [r["report_id"] for r in await open_reports(admin_http, status="resolved")] == [
        ids[0]]
    assert_error(await admin_http.post("/admin/reports/12345/resolve",
                                       json={"action": "uphold"}, headers=AS_ADMIN),
                 404, "unknown_report")
    assert_error(await admin_http.post(f"/admin/reports/{ids[1]}/resolve",
                                       json={"action": "ban"}, headers=AS_ADMIN), 400)
    assert_error(await admin_http.get("/admin/reports", params={"status": "all"},
                                      headers=AS_ADMIN), 400)
    # Only the admin token.
    assert_error(await reporters[0].get("/admin/reports"), 401)
    assert_error(await admin_http.get("/admin/abuse"), 401)


async def test_without_an_admin_token_there_are_no_moderation_routes(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert "/reports" in paths
    assert not [path for path in paths if path.startswith(("/admin/reports", "/admin/abuse",
                                                           "/admin/users"))]
    assert_error(await http.get("/admin/reports", headers=AS_ADMIN), 404, "not_found")


async def test_reports_are_rate_limited(admin_http: httpx.AsyncClient) -> None:
    """attack13: docs/api.md promises 429 for POST /reports, but no limiter was wired
    (ReportService.rate_limit stayed None): one account could file a report per message
    it can read, each keeping 64 KiB of evidence forever, as fast as it could send."""
    alice, mallory = await new_account(admin_http), await new_account(admin_http)
    chat = await alice.direct_with(mallory)
    seqs = [(await alice.send(chat, f"hello {n}")).json()["seq"] for n in range(40)]
    statuses = []
    for seq in seqs:
        response = await report(mallory, chat, seq=seq, evidence="x" * 65_536)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert float(response.headers["Retry-After"]) > 0
            break
    assert statuses[0] == 201
    assert statuses[-1] == 429, statuses
