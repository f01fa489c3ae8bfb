"""Reports and limits across real shards: a report goes to the reported user's home
wherever it is filed; the admin's list from any shard merges every home's; a resolution
and a limit reach the right home; a shard asks a user's home before letting them start
a conversation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from chatd.client import ApiError
from tests.cluster.harness import ADMIN_TOKEN, Cluster, home_of_user, owner_of

AS_ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def admin(cluster: Cluster, shard: str, method: str, path: str,
                **kwargs: Any) -> Any:
    async with httpx.AsyncClient(base_url=cluster[shard].url, timeout=30,
                                 headers=AS_ADMIN) as http:
        response = await http.request(method, path, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


async def test_reports_and_limits_across_shards(cluster: Cluster) -> None:
    alice = await cluster.person(home="a")
    mallory = await cluster.person(home="b")
    carol = await cluster.person(home="c")
    as_alice = await cluster.client("a", alice)
    as_mallory = await cluster.client("b", mallory)
    as_carol = await cluster.client("c", carol)

    chat = (await as_alice.open_direct(mallory.user_id))["conversation_id"]
    seq = (await as_mallory.send(chat, "click my link"))["seq"]
    # Filed through a, kept on b (mallory's home).
    against_mallory = await as_alice.request("POST", "/reports", {
        "conversation_id": chat, "seq": seq, "reason": "spam", "evidence": "click my link"})
    group = (await as_carol.create_group("Club", [mallory.user_id, alice.user_id]))[
        "conversation_id"]
    # Filed through c, kept on b; and one against alice, kept on a.
    by_carol = await as_carol.request("POST", "/reports", {
        "conversation_id": group, "user_id": mallory.user_id, "reason": "abuse"})
    against_alice = await (await cluster.client("c", mallory)).request("POST", "/reports", {
        "conversation_id": group, "user_id": alice.user_id, "reason": "harassment"})
    assert home_of_user(against_mallory["report_id"]) == home_of_user(
        by_carol["report_id"]) == "b"
    assert home_of_user(against_alice["report_id"]) == "a"
    # A repeat through another shard is the same report.
    again = await (await cluster.client("c", alice)).request("POST", "/reports", {
        "conversation_id": chat, "seq": seq, "reason": "spam"})
    assert again == against_mallory

    listed = await admin(cluster, "c", "GET", "/admin/reports")
    assert listed["unreachable"] == []
    ids = [report["report_id"] for report in listed["reports"]]
    assert ids == sorted([against_mallory["report_id"], by_carol["report_id"],
                          against_alice["report_id"]], key=int)
    [evidence] = [r for r in listed["reports"] if r["report_id"] == against_mallory["report_id"]]
    assert (evidence["message_text"], evidence["reporter_id"]) == ("click my link",
                                                                   alice.user_id)
    paged = await admin(cluster, "a", "GET", "/admin/reports", params={"limit": 2})
    assert [r["report_id"] for r in paged["reports"]] == ids[:2]
    rest = await admin(cluster, "b", "GET", "/admin/reports",
                       params={"after": paged["next_after"]})
    assert [r["report_id"] for r in rest["reports"]] == ids[2:]

    # Resolved through c, on b: mallory is limited; a asks b before a new conversation.
    resolved = await admin(cluster, "c", "POST",
                           f"/admin/reports/{against_mallory['report_id']}/resolve",
                           json={"action": "limit", "note": "spam links"})
    assert (resolved["status"], resolved["action"]) == ("resolved", "limit")
    via_a = await cluster.client("a", mallory)
    with pytest.raises(ApiError) as refused:
        await via_a.create_group("Spam", [])
    assert (refused.value.status, refused.value.code) == (403, "account_limited")
    with pytest.raises(ApiError):
        await via_a.open_direct(carol.user_id)
    assert (await via_a.send(group, "replying is fine"))["seq"] > 0
    queue = await admin(cluster, "a", "GET", "/admin/abuse")
    [shown] = [account for account in queue["accounts"] if account["user_id"] == mallory.user_id]
    # (carol's report names no message: it reaches the admins but scores nothing.)
    assert (shown["limited"], shown["limited_by"], shown["reporters"]) == (True, "admin", 1)
    assert queue["unreachable"] == []

    # Lifted through a, on b; a limit set through c on alice's home, a.
    await admin(cluster, "a", "POST", f"/admin/users/{mallory.user_id}/unlimit", json={})
    assert (await via_a.create_group("Fine", []))["kind"] == "group"
    await admin(cluster, "c", "POST", f"/admin/users/{alice.user_id}/limit", json={})
    with pytest.raises(ApiError) as refused:
        await (await cluster.client("b", alice)).create_group("No", [])
    assert refused.value.code == "account_limited"
    resolved_list = await admin(cluster, "b", "GET", "/admin/reports",
                                params={"status": "resolved"})
    assert [r["report_id"] for r in resolved_list["reports"]] == [
        against_mallory["report_id"]]


async def test_a_home_that_does_not_answer_is_named_in_the_lists(cluster: Cluster) -> None:
    alice = await cluster.person(home="a")
    mallory = await cluster.person(home="c")
    as_alice = await cluster.client("a", alice)
    chat = (await as_alice.open_direct(mallory.user_id))["conversation_id"]
    await cluster.proxy.stop()  # c is cut off from a and b
    await cluster.wait_links({"a": {"c": False}, "b": {"c": False}})
    listed = await admin(cluster, "a", "GET", "/admin/reports")
    assert listed == {"reports": [], "unreachable": ["c"]}
    with pytest.raises(ApiError) as failed:
        await as_alice.request("POST", "/reports", {
            "conversation_id": chat, "user_id": mallory.user_id, "reason": "spam"})
    # c is mallory's home (and may own the chat): either way it cannot be reached.
    assert (failed.value.status, failed.value.code) in (
        (503, "home_unreachable"), (503, "owner_unreachable"))
    await cluster.proxy.start()
    await cluster.wait_links()


async def test_request_signals_reach_the_senders_home_from_every_owner(
        cluster: Cluster) -> None:
    """Requests opened in direct chats owned by all three shards are counted at the
    sender's home (a): the owners post their signals over the mesh."""
    spammer = await cluster.person(home="a")
    as_spammer = await cluster.client("a", spammer)
    owners = set()
    # A young account's 19 requests: (19 - 10) x 3 = 27, past review_score (25).
    for index in range(19):
        stranger = await cluster.person(home="bc"[index % 2])
        chat = (await as_spammer.open_direct(stranger.user_id))["conversation_id"]
        owners.add(owner_of(chat))
        await as_spammer.send(chat, "buy now")
    assert owners == {"a", "b", "c"}
    shown: dict[str, Any] = {}
    for _ in range(500):
        queue = await admin(cluster, "b", "GET", "/admin/abuse")
        shown = {entry["user_id"]: entry for entry in queue["accounts"]}.get(
            spammer.user_id, {})
        if shown.get("requests_opened") == 19:
            break
        await trio.sleep(0.02)
    assert (shown["requests_opened"], shown["score"], shown["limited"]) == (19, 27, False)


async def test_big_reports_cannot_hide_a_home_from_the_admin_list(cluster: Cluster) -> None:
    """attack13: a home answered a page of reports whole, and 64 KiB of evidence (plus up
    to 64 KiB of the server's copy of the message) per report passes the mesh's 1 MiB
    frame in a page of a few: so a dozen big reports filed against people homed on a
    shard made every other shard list it as `unreachable`, hiding every open report
    kept there (say, those against the one who filed them) from moderators."""
    victim = await cluster.person(home="b")
    filed = []
    for _ in range(2):  # (two reporters: one's burst of the `reports` bucket is 10)
        mallory = await cluster.person(home="a")
        as_mallory = await cluster.client("a", mallory)
        chat = (await as_mallory.open_direct(victim.user_id))["conversation_id"]
        as_victim = await cluster.client("b", victim)
        for n in range(7):
            seq = (await as_victim.send(chat, f"{n} " + "v" * 60_000))["seq"]
            filed.append((await as_mallory.request("POST", "/reports", {
                "conversation_id": chat, "seq": seq, "reason": "spam",
                "evidence": "e" * 65_536}))["report_id"])
    seen: list[str] = []
    after = None
    while True:
        params = {"after": after} if after else {}
        listed = await admin(cluster, "c", "GET", "/admin/reports", params=params)
        assert listed["unreachable"] == []
        seen += [report["report_id"] for report in listed["reports"]]
        after = listed.get("next_after")
        if after is None:
            break
    assert seen == sorted(filed, key=int)
