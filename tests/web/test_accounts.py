from __future__ import annotations

import httpx
import pytest

from tests.helpers import PASSWORD, assert_error, fresh_handle, login, new_account


async def test_register_login_and_me(http: httpx.AsyncClient) -> None:
    response = await http.post("/register", json={
        "handle": "Alice.Smith", "password": PASSWORD, "display_name": "  Alice  "})
    assert response.status_code == 201
    user = response.json()
    assert user["handle"] == "alice.smith"
    assert user["display_name"] == "Alice"
    assert "password" not in response.text

    alice = await login(http, "ALICE.smith", device_name="phone")
    assert alice.user_id == user["user_id"]
    me = (await alice.get("/me")).json()
    assert me == user


async def test_phone_number_handles(http: httpx.AsyncClient) -> None:
    response = await http.post("/register", json={
        "handle": "+14155550123", "password": PASSWORD, "display_name": "Phone"})
    assert response.status_code == 201
    assert response.json()["handle"] == "+14155550123"
    for bad in ("+0123456", "+41555501234567890", "+1 415", "+1234", "+1415x550123"):
        response = await http.post("/register", json={
            "handle": bad, "password": PASSWORD, "display_name": "x"})
        assert_error(response, 400, "bad_request")


async def test_handles_are_unique_case_insensitively(http: httpx.AsyncClient) -> None:
    await new_account(http, "carol")
    response = await http.post("/register", json={
        "handle": "CAROL", "password": PASSWORD, "display_name": "Other"})
    assert_error(response, 409, "handle_taken")


@pytest.mark.parametrize("body, code", [
    ({"password": PASSWORD, "display_name": "x"}, "missing_field"),
    ({"handle": 42, "password": PASSWORD, "display_name": "x"}, "invalid_field"),
    ({"handle": "okname", "password": "short", "display_name": "x"}, "bad_request"),
    ({"handle": "okname", "password": PASSWORD, "display_name": ""}, "bad_request"),
    ({"handle": "okname", "password": PASSWORD, "display_name": "a\x00b"}, "bad_request"),
    ({"handle": "ab", "password": PASSWORD, "display_name": "x"}, "bad_request"),
    ({"handle": "white space", "password": PASSWORD, "display_name": "x"}, "bad_request"),
    ({"handle": "okname", "password": "x" * 2000, "display_name": "x"}, "bad_request"),
])
async def test_register_rejects_bad_input(http: httpx.AsyncClient, body: dict[str, object],
                                          code: str) -> None:
    assert_error(await http.post("/register", json=body), 400, code)


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"text"', b"\xff\xfe", b"null"])
async def test_malformed_json_is_a_clear_400(http: httpx.AsyncClient, raw: bytes) -> None:
    response = await http.post("/register", content=raw,
                               headers={"content-type": "application/json"})
    assert_error(response, 400, "malformed_json")


async def test_failed_login_does_not_reveal_whether_the_handle_exists(
        http: httpx.AsyncClient) -> None:
    account = await new_account(http)
    wrong_password = await http.post("/login", json={
        "handle": account.handle, "password": "not the password"})
    unknown_handle = await http.post("/login", json={
        "handle": fresh_handle("ghost"), "password": "not the password"})
    invalid_handle = await http.post("/login", json={"handle": "!", "password": "whatever"})
    for response in (wrong_password, unknown_handle, invalid_handle):
        assert_error(response, 401, "bad_credentials")
    assert wrong_password.json() == unknown_handle.json() == invalid_handle.json()


async def test_each_login_is_a_device_and_devices_can_be_revoked(
        http: httpx.AsyncClient) -> None:
    phone = await new_account(http, device_name="phone")
    laptop = await login(http, phone.handle, device_name="laptop")
    devices = (await laptop.get("/devices")).json()["devices"]
    assert [(d["name"], d["current"]) for d in devices] == [("phone", False), ("laptop", True)]

    assert (await laptop.delete(f"/devices/{phone.device_id}")).status_code == 204
    assert_error(await phone.get("/me"), 401, "invalid_token")
    assert (await laptop.get("/me")).status_code == 200
    assert_error(await laptop.delete(f"/devices/{phone.device_id}"), 404, "unknown_device")
    assert_error(await laptop.delete("/devices/not-an-id"), 400)


async def test_a_device_of_another_user_cannot_be_revoked(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    mallory = await new_account(http)
    assert_error(await mallory.delete(f"/devices/{alice.device_id}"), 404, "unknown_device")
    assert (await alice.get("/me")).status_code == 200


async def test_logout_revokes_the_token(http: httpx.AsyncClient) -> None:
    account = await new_account(http)
    assert (await account.post("/logout")).status_code == 204
    assert_error(await account.get("/me"), 401, "invalid_token")
    assert_error(await account.post("/logout"), 401, "invalid_token")


@pytest.mark.parametrize("header", [
    None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer chatd_forged", "bearer  x y",
])
async def test_bad_tokens_are_refused(http: httpx.AsyncClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await http.get("/me", headers=headers)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_profile_update(http: httpx.AsyncClient) -> None:
    account = await new_account(http)
    response = await account.patch("/me", {"display_name": "New Name", "status": "busy"})
    assert response.status_code == 200
    assert (response.json()["display_name"], response.json()["status"]) == ("New Name", "busy")
    response = await account.patch("/me", {"status": ""})
    assert (response.json()["display_name"], response.json()["status"]) == ("New Name", "")
    assert_error(await account.patch("/me", {"display_name": 5}), 400, "invalid_field")
    assert_error(await account.patch("/me", {"handle": "steal"}), 400, "invalid_field")
    assert_error(await account.patch("/me", {"status": "x" * 141}), 400)
    assert_error(await account.patch("/me", {"hide_last_seen": "yes"}), 400, "invalid_field")
    assert (await account.patch("/me", {"hide_last_seen": True})).json()["hide_last_seen"]
    assert (await account.get("/me")).json()["display_name"] == "New Name"


async def test_concurrent_profile_edits_both_survive(http: httpx.AsyncClient) -> None:
    import trio

    account = await new_account(http)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(account.patch, "/me", {"display_name": "Both"})
        nursery.start_soon(account.patch, "/me", {"status": "kept"})
    me = (await account.get("/me")).json()
    assert (me["display_name"], me["status"]) == ("Both", "kept")


async def test_user_lookup(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    bob = await new_account(http)
    found = (await alice.get("/users", params={"handle": bob.handle.upper()})).json()
    assert found["user_id"] == bob.user_id
    assert set(found) == {"user_id", "handle", "display_name", "status"}
    assert (await alice.get(f"/users/{bob.user_id}")).json() == found
    assert_error(await alice.get("/users", params={"handle": fresh_handle("nobody")}), 404,
                 "unknown_user")
    assert_error(await alice.get("/users"), 400, "missing_field")
    assert_error(await alice.get("/users/123"), 404, "unknown_user")
    assert_error(await alice.get("/users/abc"), 400)
    assert_error(await alice.get("/users/99999999999999999999"), 400)
