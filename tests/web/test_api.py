"""The route declarations (web/api.py): what a route serves is what the document says.

Each test pins one contract failure Schemathesis found before the spec was generated from
the models (tests/web/test_fuzz_rest.py runs every check over the whole API).
"""

from __future__ import annotations

import logging

import httpx
import pytest

from chatd.domain.models import Session
from chatd.server import RunningServer
from chatd.web import models
from chatd.web.api import Access, Api
from chatd.web.render import NO_CONTENT, Reply
from chatd.web.schema import Limits
from tests.helpers import PASSWORD, assert_error, fresh_handle, new_account


def allowed(response: httpx.Response) -> set[str]:
    return {method.strip() for method in response.headers["Allow"].split(",")}


@pytest.mark.parametrize(("method", "path", "takes"), [
    ("GET", "/conversations/direct", {"POST"}),
    ("PATCH", "/groups/create", {"POST"}),
    ("GET", "/messages/send", {"POST"}),
    ("PUT", "/me", {"DELETE", "GET", "HEAD", "PATCH"}),
])
async def test_a_method_a_path_does_not_take_is_405_with_the_methods_it_does(
        http: httpx.AsyncClient, method: str, path: str, takes: set[str]) -> None:
    """A fixed segment beside a parameter (`direct` beside {conversation_id}) is not a
    parameter value: it was GET /conversations/{id} with a bad id (400)."""
    alice = await new_account(http)
    response = await http.request(method, path, headers=alice.headers)
    assert_error(response, 405, "method_not_allowed")
    assert allowed(response) == takes | {"OPTIONS"}
    options = await http.options(path)
    assert allowed(options) == takes | {"OPTIONS"}


async def test_ids_are_the_ids_the_schema_describes(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    for bad in ("0", "9223372036854775808", "00000000000000000001x", 7, True):
        assert_error(await alice.post("/conversations/direct", {"user_id": bad}), 400,
                     "bad_request")
    padded = "0" * (19 - len(bob.user_id)) + bob.user_id
    assert (await alice.post("/conversations/direct", {"user_id": padded})).status_code == 201
    for bad in ("0", "9223372036854775808", "abc"):
        assert_error(await alice.get(f"/users/{bad}"), 400, "bad_request")


async def test_optional_fields_may_be_null_and_unknown_ones_are_refused(
        http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    before = (await alice.get("/me")).json()
    response = await alice.patch("/me", {"display_name": None, "status": "here",
                                         "hide_last_seen": None, "read_receipts": None})
    assert response.status_code == 200, response.text
    assert response.json() == {**before, "status": "here"}
    assert_error(await alice.patch("/me", {"status": "x", "avatar": "y"}), 400,
                 "invalid_field")
    login = await http.post("/login", json={"handle": alice.handle, "password": PASSWORD,
                                            "device_name": None})
    assert login.status_code == 200, login.text


async def test_integral_numbers_are_integers(http: httpx.AsyncClient) -> None:
    """JSON Schema counts 1.0 as an integer; so does the server now."""
    alice, bob = await new_account(http), await new_account(http)
    direct = await alice.direct_with(bob)
    await alice.send(direct, "one")
    response = await bob.post(f"/conversations/{direct}/read", {"seq": 1.0})
    assert response.status_code == 200, response.text
    assert_error(await bob.post(f"/conversations/{direct}/read", {"seq": 0.5}), 400,
                 "invalid_field")


async def test_forms_the_schema_does_not_describe_are_refused(http: httpx.AsyncClient) -> None:
    """Handles, content types and base64 as docs/api.md describes them, not what the
    rules once also let through (spaces to trim, capitals to fold, excess padding)."""
    alice, bob = await new_account(http), await new_account(http)
    direct = await alice.direct_with(bob)
    register = {"password": PASSWORD, "display_name": "Padded"}
    assert_error(await http.post("/register", json={**register, "handle": f" {fresh_handle()} "}),
                 400, "bad_request")
    assert_error(await alice.get("/users", params={"handle": f" {bob.handle}"}), 400,
                 "bad_request")
    assert (await alice.get("/users", params={"handle": bob.handle.upper()})).status_code == 200
    send = {"conversation_id": direct, "client_msg_id": "m1", "body": "hi"}
    assert_error(await alice.post("/messages/send", {**send, "content_type": "Text/Plain"}),
                 400, "bad_request")
    assert_error(await alice.post("/messages/send", {
        **send, "content_type": "application/x-olm", "body": "AAAA="}), 400, "invalid_field")
    for query in ("after=", "limit="):
        assert_error(await alice.get(f"/messages/{direct}?{query}"), 400, "invalid_field")


async def test_status_names_the_conversation_as_its_id(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    group = await alice.group("Team", bob)
    padded = "0" * (19 - len(group)) + group  # snowflakes have 18 digits this century
    response = await alice.get(f"/messages/{padded}/1/status")
    assert response.status_code == 200, response.text
    assert response.json()["conversation_id"] == group


async def test_metrics_off_means_no_route(server: RunningServer, http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/metrics"), 404, "not_found")
    assert "/metrics" not in (await http.get("/openapi.json")).json()["paths"]


async def test_a_route_answering_what_it_does_not_declare_is_a_500(
        server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """The view checks each answer against the declaration, so an undocumented status
    cannot reach clients (the 201 of POST /conversations/direct once did)."""
    from chatd.web.app import create_app

    app = create_app(server.services)
    api = Api(server.services.users, limits=Limits(), admin_token="")

    @api.route("GET", "/created", summary="says 201, declares 200", access=Access.PUBLIC,
               response=models.Health)
    async def created() -> Reply:
        return models.Health("ok", "local", "0", []), 201

    @api.route("GET", "/empty", summary="says 204, declares a model",
               response=models.Health)
    async def empty(session: Session) -> Reply:
        return NO_CONTENT

    api.install(app)
    client = app.test_client()
    with caplog.at_level(logging.ERROR):
        assert (await client.get("/created")).status_code == 500
    assert "GET /created answered 201, which it does not declare" in caplog.text
    alice = await _token(server)
    response = await client.get("/empty", headers={"Authorization": f"Bearer {alice}"})
    assert response.status_code == 500
    assert (await client.get("/empty")).status_code == 401  # authentication comes first


async def _token(server: RunningServer) -> str:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return (await new_account(http)).token


async def test_every_user_route_is_handed_the_session(server: RunningServer) -> None:
    """A route declared for users authenticates before its handler runs; its handler
    takes the `Session` (and the public ones take none)."""
    from chatd.web.app import create_app

    app = create_app(server.services)
    api = Api(server.services.users, limits=Limits(), admin_token="")
    seen: list[Session] = []

    @api.route("POST", "/whoami", summary="who", status=204)
    async def whoami(session: Session) -> Reply:
        seen.append(session)
        return NO_CONTENT

    api.install(app)
    client = app.test_client()
    token = await _token(server)
    assert (await client.post("/whoami")).status_code == 401
    assert seen == []
    assert (await client.post("/whoami", headers={
        "Authorization": f"Bearer {token}"})).status_code == 204
    [session] = seen
    assert session.user_id > 0
