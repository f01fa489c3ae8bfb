"""The operator's account routes on a real shard (/admin/users..., /admin/exports/{id}):
the listing (pages, handle filter), one account, deactivate (logins refused, tokens and
sockets dead) and reactivate, erase and export as the operator; every route refused
without the admin token or with a wrong one, and 404 for a user who does not exist."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from chatd.client import ChatClient
from chatd.server import RunningServer
from tests.conftest import ServerFactory
from tests.helpers import PASSWORD, assert_error, fresh_handle, login, new_account
from tests.web.test_gdpr import ready_export

ADMIN = "admin-users-token-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
#: An id no user has (well formed: a Snowflake of this shard, far in the future).
NOBODY = str((1 << 62) + 12345)


@pytest.fixture
async def operated(start_server: ServerFactory) -> RunningServer:
    return await start_server(server={"admin_token": ADMIN})


@pytest.fixture
async def http(operated: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=operated.url, timeout=30) as client:
        yield client


async def test_the_listing_pages_in_id_order_and_filters_by_handle(
        http: httpx.AsyncClient) -> None:
    prefix = fresh_handle("lst")
    mine = [await new_account(http, f"{prefix}x{n}") for n in range(5)]
    other = await new_account(http)
    everyone = (await http.get("/admin/users", headers=AS_ADMIN)).json()
    ids = [user["user_id"] for user in everyone["users"]]
    assert ids == sorted(ids, key=int), ids
    assert everyone["next_after"] is None, everyone
    assert {a.user_id for a in [*mine, other]} <= set(ids)
    # Pages of two, by handle prefix in any case: five users, three pages.
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params = {"handle": prefix.upper(), "limit": "2", **({"after": after} if after else {})}
        page = await http.get("/admin/users", headers=AS_ADMIN, params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        pages += 1
        assert len(body["users"]) <= 2
        seen.extend(user["user_id"] for user in body["users"])
        after = body["next_after"]
        if after is None:
            break
    assert seen == [a.user_id for a in mine] and pages == 3
    shown = next(user for user in everyone["users"] if user["user_id"] == mine[0].user_id)
    assert shown["handle"] == mine[0].handle and shown["status"] == "active"
    assert shown["deactivated_at"] == shown["erased_at"] == 0
    assert_error(await http.get("/admin/users", headers=AS_ADMIN, params={"limit": "0"}), 400)


async def test_show_tells_the_account_its_devices_and_counts(
        http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    await alice.direct_with(bob)
    await alice.group("g", bob)
    shown = await http.get(f"/admin/users/{alice.user_id}", headers=AS_ADMIN)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["user"]["user_id"] == alice.user_id and body["user"]["status"] == "active"
    assert [device["device_id"] for device in body["devices"]] == [alice.device_id]
    assert body["conversations"] == 2 and body["uploads"] == 0
    assert body["unreachable"] == []
    assert_error(await http.get(f"/admin/users/{NOBODY}", headers=AS_ADMIN), 404,
                 "unknown_user")


async def test_deactivate_revokes_everything_until_reactivated(
        operated: RunningServer, http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    async with ChatClient(operated.url) as client:
        await client.login(alice.handle, PASSWORD, "phone")
        async with client.connect() as live:
            deactivated = await http.post(f"/admin/users/{alice.user_id}/deactivate",
                                          headers=AS_ADMIN)
            assert deactivated.status_code == 200, deactivated.text
            body = deactivated.json()
            assert body["user"]["status"] == "deactivated"
            assert body["user"]["deactivated_at"] > 0 and body["devices"] == []
            # Her socket is closed (device revoked), her tokens are dead.
            with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
                while True:
                    await live.next_event()
            assert live.close_code == 4001
    assert_error(await alice.get("/me"), 401, "invalid_token")
    refused = await http.post("/login", json={"handle": alice.handle, "password": PASSWORD})
    assert_error(refused, 403, "account_deactivated")
    # Deactivating twice keeps the first time.
    again = await http.post(f"/admin/users/{alice.user_id}/deactivate", headers=AS_ADMIN)
    assert again.json()["user"]["deactivated_at"] == body["user"]["deactivated_at"]

    reactivated = await http.post(f"/admin/users/{alice.user_id}/reactivate",
                                  headers=AS_ADMIN)
    assert reactivated.status_code == 200, reactivated.text
    assert reactivated.json()["user"]["status"] == "active"
    assert reactivated.json()["user"]["deactivated_at"] == 0
    back = await login(http, alice.handle)
    assert (await back.get("/me")).status_code == 200


async def test_the_operator_erases_and_exports_an_account(
        operated: RunningServer, http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    direct = await alice.direct_with(bob)
    await alice.send(direct, "words to keep in the export")
    started = await http.post(f"/admin/users/{alice.user_id}/export", headers=AS_ADMIN)
    assert started.status_code == 202, started.text
    export_id = started.json()["export_id"]
    zipped = await ready_export(alice, export_id, admin=AS_ADMIN)
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(zipped.content))
    assert [m["body"] for m in json.loads(archive.read("messages.json"))] == [
        "words to keep in the export"]
    # The export is of alice's data: alice may fetch it too, nobody else.
    assert (await alice.get(f"/me/export/{export_id}")).status_code == 200
    assert_error(await bob.get(f"/me/export/{export_id}"), 404, "unknown_export")
    assert_error(await http.get("/admin/exports/" + "0" * 35, headers=AS_ADMIN), 404,
                 "unknown_export")

    erased = await http.post(f"/admin/users/{alice.user_id}/erase", headers=AS_ADMIN)
    assert erased.status_code == 200 and erased.json() == {"status": "erased"}
    assert_error(await alice.get("/me"), 401, "invalid_token")
    shown = (await http.get(f"/admin/users/{alice.user_id}", headers=AS_ADMIN)).json()
    assert shown["user"]["status"] == "erased" and shown["user"]["handle"] == ""
    assert shown["user"]["display_name"] == "deleted account"
    # Her export went with her account.
    assert_error(await http.get(f"/admin/exports/{export_id}", headers=AS_ADMIN), 404,
                 "unknown_export")
    history = (await bob.get(f"/messages/{direct}")).json()["messages"]
    assert history[-1]["body"]["event"] == "member_erased"
    # Erasing again is harmless; exporting an erased account is refused as nobody.
    again = await http.post(f"/admin/users/{alice.user_id}/erase", headers=AS_ADMIN)
    assert again.status_code == 200 and again.json() == {"status": "erased"}
    for path in ("erase", "export", "deactivate", "reactivate"):
        assert_error(await http.post(f"/admin/users/{NOBODY}/{path}", headers=AS_ADMIN),
                     404, "unknown_user")


ROUTES = [("GET", "/admin/users"), ("GET", "/admin/users/{user}"),
          ("POST", "/admin/users/{user}/deactivate"), ("POST", "/admin/users/{user}/reactivate"),
          ("POST", "/admin/users/{user}/erase"), ("POST", "/admin/users/{user}/export"),
          ("GET", "/admin/exports/" + "0" * 35)]


async def test_every_route_needs_the_admin_token(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    for method, template in ROUTES:
        path = template.format(user=alice.user_id)
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        alice.headers):
            refused = await http.request(method, path, headers=headers)
            assert refused.status_code in (401, 403), (method, path, refused.text)
            assert refused.json()["error"]["code"]
    # Nothing happened to her.
    assert (await alice.get("/me")).status_code == 200
    assert (await login(http, alice.handle)).user_id == alice.user_id


async def test_without_an_admin_token_the_routes_are_not_served(
        start_server: ServerFactory) -> None:
    running = await start_server()
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        alice = await new_account(http)
        for method, template in ROUTES:
            response = await http.request(method, template.format(user=alice.user_id),
                                          headers=AS_ADMIN)
            assert response.status_code in (404, 405), (method, template, response.text)
