"""Mute per conversation and the previews setting (web/routes_notify.py), through a real
server: members only, per user, bad input refused, kept across a restart of the process's
view (read back from the home)."""

from __future__ import annotations

import time

import httpx

from chatd.server import RunningServer
from tests.helpers import assert_error, new_account


async def test_mute_is_per_user_and_members_only(http: httpx.AsyncClient) -> None:
    alice, bob, eve = [await new_account(http) for _ in range(3)]
    conversation = await alice.direct_with(bob)
    path = f"/conversations/{conversation}/notifications"
    fresh = await alice.get(path)
    assert fresh.status_code == 200 and fresh.json() == {
        "conversation_id": conversation, "muted_until": 0}

    until = int(time.time() * 1000) + 3_600_000
    muted = await alice.patch(path, {"muted_until": until})
    assert muted.status_code == 200, muted.text
    assert muted.json()["muted_until"] == until
    assert (await alice.get(path)).json()["muted_until"] == until
    # Bob's own setting is untouched; Eve is not a member.
    assert (await bob.get(path)).json()["muted_until"] == 0
    assert_error(await eve.patch(path, {"muted_until": until}), 404)
    assert_error(await eve.get(path), 404)
    # A time past unmutes, as does null.
    assert (await alice.patch(path, {"muted_until": 5})).json()["muted_until"] == 0
    await alice.patch(path, {"muted_until": until})
    assert (await alice.patch(path, {"muted_until": None})).json()["muted_until"] == 0
    assert (await alice.get(path)).json()["muted_until"] == 0


async def test_mute_refuses_bad_input(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    conversation = await alice.direct_with(bob)
    path = f"/conversations/{conversation}/notifications"
    for body in ({"muted_until": "soon"}, {"muted_until": -1}, {"muted_until": 10**16},
                 {"muted_until": True}, {"other": 1}, [1]):
        assert_error(await alice.patch(path, body), 400)
    response = await http.patch(path, content=b"{not json",
                                headers={**alice.headers, "content-type": "application/json"})
    assert_error(response, 400)
    assert_error(await alice.patch("/conversations/123/notifications", {"muted_until": 0}),
                 404)
    assert_error(await http.patch(path, json={"muted_until": 0}), 401)


async def test_previews_default_off(http: httpx.AsyncClient, server: RunningServer) -> None:
    alice = await new_account(http)
    assert (await alice.get("/me/notifications/previews")).json() == {"previews": False}
    on = await alice.patch("/me/notifications/previews", {"previews": True})
    assert on.status_code == 200 and on.json() == {"previews": True}
    assert (await alice.patch("/me/notifications/previews", {})).json() == {"previews": True}
    assert_error(await alice.patch("/me/notifications/previews", {"previews": "yes"}), 400)
    other = await new_account(http)
    assert (await other.get("/me/notifications/previews")).json() == {"previews": False}
    prefs = server.services.notify_prefs
    assert prefs.previews(int(alice.user_id)) and not prefs.previews(int(other.user_id))
