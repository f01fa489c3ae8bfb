"""REST input at the edge, privacy of existence, and device limits.

Each test reproduces a defect found by an audit (each failed on the code before the fix).
"""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from chatd.storage import records
from tests.conftest import ServerFactory
from tests.helpers import PASSWORD, Account, assert_error, fresh_handle, login, new_account

LONE_SURROGATE = '"\\ud800"'


async def post_raw(account: Account, path: str, text: str, method: str = "POST",
                   ) -> httpx.Response:
    """Sends `text` as the body byte for byte (json= would refuse a lone surrogate)."""
    return await account.http.request(method, path, content=text.encode(),
                                      headers={**account.headers,
                                               "content-type": "application/json"})


async def test_a_lone_surrogate_is_a_400_and_poisons_no_one_elses_batch(
        http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    conv = await alice.direct_with(bob)
    poisoned = [
        ("PATCH", "/me", '{"display_name":' + LONE_SURROGATE + "}"),
        ("PATCH", "/me", '{"status":"ok \\udfff"}'),
        ("POST", "/groups/create", '{"name":' + LONE_SURROGATE + ',"members":[]}'),
        ("POST", "/messages/send", '{"conversation_id":"' + conv + '","client_msg_id":"x",'
                                   '"content_type":"text/plain","body":"\\ud83d"}'),
    ]
    results: list[httpx.Response] = []
    sends: list[httpx.Response] = []

    async def poison(method: str, path: str, text: str) -> None:
        results.append(await post_raw(alice, path, text, method))

    async def send(n: int) -> None:
        sends.append(await bob.send(conv, f"in the same batch {n}"))

    # Sent together, so that they would share group-commit batches.
    async with trio.open_nursery() as nursery:
        for method, path, text in poisoned:
            nursery.start_soon(poison, method, path, text)
        for n in range(10):
            nursery.start_soon(send, n)
    for response in results:
        assert_error(response, 400, "invalid_text")
    assert [r.status_code for r in sends] == [201] * 10
    register = await http.post("/register", content=(
        '{"handle":"' + fresh_handle() + '","password":"' + PASSWORD +
        '","display_name":"\\udc00"}').encode())
    assert_error(register, 400, "invalid_text")


@pytest.mark.parametrize("depth", [17, 1_000, 100_000])
async def test_deep_nesting_is_a_400(http: httpx.AsyncClient, depth: int) -> None:
    alice = await new_account(http)
    body = '{"display_name":' + "[" * depth + "]" * depth + "}"
    assert_error(await post_raw(alice, "/me", body, "PATCH"), 400, "nesting_too_deep")
    assert (await alice.get("/me")).status_code == 200


@pytest.mark.parametrize("name", ["Al\u202eice", "a\u200bb", "tab\there", "two\u2028lines",
                                  "\u2066isolate\u2069", "x\u00ad"])
async def test_names_refuse_format_and_control_characters(http: httpx.AsyncClient,
                                                           name: str) -> None:
    alice = await new_account(http)
    assert_error(await alice.patch("/me", {"display_name": name}), 400)
    assert_error(await alice.patch("/me", {"status": name}), 400)
    assert_error(await alice.post("/groups/create", {"name": name, "members": []}), 400)
    group = await alice.group("Team")
    assert_error(await alice.patch(f"/groups/{group}", {"name": name}), 400)
    assert_error(await http.post("/login", json={
        "handle": alice.handle, "password": PASSWORD, "device_name": name}), 400)
    assert_error(await http.post("/register", json={
        "handle": fresh_handle(), "password": PASSWORD, "display_name": name}), 400)


async def test_names_keep_emoji_sequences_and_are_nfc(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # joined by zero-width joiners
    changed = await alice.patch("/me", {"display_name": f"Cafe\u0301 {family}"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["display_name"] == f"Caf\u00e9 {family}"


async def test_non_members_get_the_same_404_whether_or_not_the_conversation_exists(
        http: httpx.AsyncClient) -> None:
    alice, bob, mallory = [await new_account(http) for _ in range(3)]
    direct = await alice.direct_with(bob)
    group = await alice.group("Private", bob)
    await alice.send(direct, "secret")
    await alice.send(group, "secret")
    nowhere = "123456789"

    def routes(conv: str) -> list[tuple[str, str, object]]:
        return [
            ("GET", f"/conversations/{conv}", None),
            ("POST", f"/conversations/{conv}/read", {"seq": 1}),
            ("GET", f"/messages/{conv}", None),
            ("GET", f"/messages/{conv}/1/status", None),
            ("POST", "/messages/send", {"conversation_id": conv, "client_msg_id": "m1",
                                        "content_type": "text/plain", "body": "hi"}),
            ("POST", f"/groups/{conv}/add", {"user_ids": [mallory.user_id]}),
            ("POST", f"/groups/{conv}/remove", {"user_ids": [bob.user_id]}),
            ("POST", f"/groups/{conv}/admins", {"user_ids": [bob.user_id]}),
            ("POST", f"/groups/{conv}/leave", None),
            ("PATCH", f"/groups/{conv}", {"name": "Mine now"}),
        ]

    async def answer(method: str, path: str, body: object, conv: str) -> tuple[int, str]:
        response = await http.request(method, path, headers=mallory.headers,
                                      content=None if body is None else json.dumps(body))
        return response.status_code, response.text.replace(conv, "ID")

    for conv in (direct, group):
        for (method, path, body), (_, unknown_path, unknown_body) in zip(
                routes(conv), routes(nowhere), strict=True):
            seen = await answer(method, path, body, conv)
            assert seen == await answer(method, unknown_path, unknown_body, nowhere), path
            assert seen[0] == 404, (path, seen)


async def test_message_status_hides_entries_from_before_the_caller_joined(
        http: httpx.AsyncClient) -> None:
    alice, bob, carol = [await new_account(http) for _ in range(3)]
    group = await alice.group("Team", bob)
    await alice.send(group, "before carol")  # seq 2
    added = await alice.post(f"/groups/{group}/add", {"user_ids": [carol.user_id]})
    assert added.status_code == 200
    for seq in (1, 2):
        assert_error(await carol.get(f"/messages/{group}/{seq}/status"), 404, "unknown_message")
    assert (await carol.get(f"/messages/{group}/3/status")).status_code == 200
    assert (await bob.get(f"/messages/{group}/2/status")).status_code == 200


async def test_devices_per_user_are_capped(start_server: ServerFactory) -> None:
    server = await start_server(auth={"max_devices": 3})
    async with httpx.AsyncClient(base_url=server.url) as http:
        first = await new_account(http)
        for n in range(2):
            await login(http, first.handle, f"device {n}")
        refused = await http.post("/login", json={"handle": first.handle, "password": PASSWORD})
        assert_error(refused, 409, "too_many_devices")
        assert "DELETE /devices" in refused.json()["error"]["message"]
        # Concurrent logins cannot pass the cap together.
        assert (await first.post("/logout")).status_code == 204
        answers: list[int] = []

        async def try_login() -> None:
            response = await http.post("/login", json={"handle": first.handle,
                                                       "password": PASSWORD})
            answers.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(try_login)
        assert sorted(answers) == [200, 409, 409, 409]


async def test_expired_devices_are_pruned(start_server: ServerFactory) -> None:
    server = await start_server(auth={"token_ttl_days": 1 / 86_400, "max_devices": 2})
    async with httpx.AsyncClient(base_url=server.url) as http:
        old = await new_account(http)
        await login(http, old.handle, "second")
        await trio.sleep(1.1)
        # At the cap, but both devices have expired: login prunes them and succeeds.
        fresh = await login(http, old.handle, "third")
        devices = (await fresh.get("/devices")).json()["devices"]
        assert [d["name"] for d in devices] == ["third"]
        await trio.sleep(1.1)
        # The sweep deletes expired devices of users who never come back.
        assert await server.services.accounts.prune_expired() == 1
        assert server.services.store.scan(records.DEVICES, records.u64(int(old.user_id))) == []
        assert server.services.store.scan(records.TOKENS, b"") == []


async def test_a_long_run_of_combining_marks_is_refused_before_it_costs_anything(
        http: httpx.AsyncClient) -> None:
    """NFC sorts combining marks quadratically: 128 KB of them as a device name froze the
    loop for 7 s, for anyone, without an account. The length is checked first now."""
    marks = "a" + "\u0301" * 40_000 + "\u0316" * 40_000
    with trio.fail_after(5):
        refused = await http.post("/login", json={"handle": "nobody", "password": "whatever1",
                                                  "device_name": marks})
        assert_error(refused, 400)
        assert "at most 64" in refused.json()["error"]["message"]
        assert (await http.get("/healthz")).status_code == 200
